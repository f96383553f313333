"""DAPO's soft over-length penalty (Yu et al. 2025, "overlong reward shaping").

With L_max = data.max_response_length and a buffer L_cache, a response of |y| tokens gets

    0                                  when |y| <= L_max - L_cache
    (L_max - L_cache - |y|) / L_cache  when L_max - L_cache < |y| <= L_max   (linear, down to -1)
    -1                                 when |y| > L_max

times `penalty_factor`, added to its reward. Generation stops at L_max, so the last case is a
response that hit the cap. Same as verl's DAPO reward manager (`min(-exceed / buffer * factor, 0)`).
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(
    lengths: np.ndarray, *, max_length: int, buffer_length: int, penalty_factor: float = 1.0
) -> np.ndarray:
    """Penalty (<= 0, float64) per response length.

    Example:
        >>> overlong_penalty(np.array([2, 7, 8, 9]), max_length=8, buffer_length=4).tolist()
        [0.0, -0.75, -1.0, -1.0]
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(f"buffer_length must be in (0, max_length={max_length}], got {buffer_length}")
    lengths = np.asarray(lengths, dtype=np.float64)
    exceed = lengths - (max_length - buffer_length)
    return np.clip(-exceed / buffer_length, -1.0, 0.0) * penalty_factor
