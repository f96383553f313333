"""Known-harmless library noise, filtered so a training log shows only what needs reading.

Each entry names why it is harmless here; anything not listed still shows.
- FSDP2 "returned a view tensor": Hugging Face modules return views of their outputs; the warning
  is about a later in-place op on such a view, and the training forwards never do one.
- torch DCP "torch.distributed is disabled/unavailable": checkpoint code in one process on purpose
  (`sophiavl merge`, single-rank loads).
- Ray "Token authentication is enabled for this Ray cluster": said on every `ray.init` of the
  loopback-only cluster the trainer starts for itself, where there is nothing to configure.
"""

from __future__ import annotations

import logging
import re
import warnings

WARNING_MESSAGES = (
    r"FSDP2-wrapped module \(.*\) returned a view tensor",
    r"torch\.distributed is (disabled|unavailable)",
)
LOG_MESSAGES = (re.compile(r"Token authentication is enabled for this Ray cluster"),)


class _DropKnown(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in LOG_MESSAGES)


_FILTER = _DropKnown()


def install(*, ray_logs: bool = False) -> None:
    """Add the filters to this process (idempotent). The driver passes `ray_logs` (it imports Ray,
    whose log handlers are set up at import); workers call it for the warnings only."""
    for message in WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    if ray_logs:
        import ray  # noqa: F401  (sets up the "ray" logger's handlers)

        for handler in logging.getLogger("ray").handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
