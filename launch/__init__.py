"""The `distrain` command and the local launcher. Never imports torch at import time."""
