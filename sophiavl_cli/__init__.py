"""sophiavl: the SophiaVL-R1 lifecycle (download, data, Trust-GRPO training, merge, inference, eval)."""

__version__ = "0.1.0"
