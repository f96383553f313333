"""Every random-number generator a rank owns, captured and restored as one plain dict.

Exact resume needs the same random draws after a restart as without one: sampling in the rollout
engine (torch), data-order shuffles (numpy / python `random`), dropout. The state is stored as
tensors, ints and tuples only, so it loads with `torch.load(weights_only=True)` (no pickle of
arbitrary objects from a checkpoint folder).

Not covered: `numpy.random.Generator` / `torch.Generator` objects owned by other code; whoever
owns one saves its `.bit_generator.state` / `.get_state()` next to these.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """The global RNG states of python `random`, numpy, torch CPU and (when in use) every CUDA device."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values, stored losslessly
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the states from `capture_rng`; the CUDA part is skipped when no GPU is in use here."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
