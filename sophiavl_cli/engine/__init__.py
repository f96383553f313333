"""The training engine: the Ray driver and workers, FSDP2, rollouts, checkpoints and loggers."""
