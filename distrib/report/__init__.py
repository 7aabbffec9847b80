"""What a run shows people beyond its scalars: pictures (the first batch, the confusion matrix, the most
confidently wrong images), the runs-side-by-side record (HPARAMS), and the profiler window."""
