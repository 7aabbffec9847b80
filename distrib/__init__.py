"""distrain's training runtime: what runs inside every process of a run (imports torch)."""
