"""The files of a run directory: config, metrics, trace, checkpoints and the manifest."""
