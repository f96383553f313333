"""What a run shows: loggers, PNG curves, timing, throughput/MFU, quiet warnings."""
