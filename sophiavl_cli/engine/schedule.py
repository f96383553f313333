"""Learning-rate schedule as a pure function of the optimizer-step count.

No scheduler object with hidden state: every rank sets the LR for optimizer step `k` from `k`
alone, and `k` follows from the training step, so a resumed run (at any world size) continues
the schedule exactly where it stopped without saving anything for it.
"""

from __future__ import annotations

import math
from typing import Literal


def lr_multiplier(
    step: int, total_steps: int, *, kind: Literal["constant", "cosine", "linear"], warmup_ratio: float = 0.0
) -> float:
    """Factor on the base LR for 0-based optimizer step `step` of `total_steps`.

    Linear warm-up over `ceil(warmup_ratio * total_steps)` steps (reaching 1 at the end of it),
    then constant, cosine to 0 or linear to 0 over the remaining steps.

    Example:
        >>> [round(lr_multiplier(s, 4, kind="linear", warmup_ratio=0.5), 2) for s in range(4)]
        [0.5, 1.0, 1.0, 0.5]
    """
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    decay_steps = max(total_steps - warmup, 1)
    progress = min((step - warmup) / decay_steps, 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress
