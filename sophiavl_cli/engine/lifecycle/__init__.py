"""A run's start and stop: every pre-flight check, the run folder and its lock, signals, the reaper."""
