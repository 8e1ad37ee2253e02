"""Ray job entrypoints (thin): ``python -m pipelines.calibrate``, ``python -m pipelines.learn``, ..."""
