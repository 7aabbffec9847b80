#!/usr/bin/env bash
# Remove test hosts (network namespaces and bridges named dtn<PID>_...) left behind by a test run that was
# killed; those of a run still in progress are kept. Safe to call anytime, as root or not (then a no-op).
cd "$(dirname "$0")" && exec python3 netns.py clean
