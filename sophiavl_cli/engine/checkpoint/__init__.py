"""Checkpoints (DCP shards, driver state, integrity, resume) and merging them into Hugging Face folders."""
