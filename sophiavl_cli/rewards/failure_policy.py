"""When to stop training because the thinking reward model keeps failing.

A failed RM call never becomes a score of 0: the engine gives the whole group outcome-only
rewards for that step. That keeps a flaky server from poisoning the gradient, but a server that is
down would silently turn Trust-GRPO into plain GRPO, so this monitor stops the run when more than
`max_failure_fraction` of a step's calls fail, or fewer than `min_coverage` of its groups used the
thinking reward (one failed reply sends a whole group to outcome-only, so a server failing every
third reply stays under the call limit while almost no group keeps its thinking reward), for
`patience` consecutive steps.

Pure logic: the driver calls `update` once per step with the client's counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from sophiavl_cli.errors import UserError

if TYPE_CHECKING:
    from sophiavl_cli.config.reward import ThinkingRewardConfig


class RewardModelDown(UserError):
    """Too many thinking-reward calls failed for too long; the message says what to check."""


class FailureMonitor:
    """Counts consecutive steps whose RM failure fraction is above the limit.

    A step with no RM calls (release mode can gate every group) leaves the count as it is: it says
    nothing about the server.
    """

    def __init__(
        self, max_failure_fraction: float = 0.5, patience: int = 3, min_coverage: float = 0.0
    ) -> None:
        if not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {max_failure_fraction}")
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.max_failure_fraction = max_failure_fraction
        self.min_coverage = min_coverage
        self.patience = patience
        self.bad_steps = 0

    @classmethod
    def from_config(cls, cfg: ThinkingRewardConfig) -> FailureMonitor:
        return cls(
            max_failure_fraction=cfg.max_failure_fraction,
            patience=cfg.failure_patience,
            min_coverage=cfg.min_coverage,
        )

    def update(
        self, calls: int, failures: int, kinds: Mapping[str, int] | None = None, coverage: float | None = None
    ) -> None:
        """Record one step; raise `RewardModelDown` on the `patience`-th bad step in a row.

        `coverage` is the step's `trust/thinking_coverage` (None: not measured); `kinds` (failure
        kind -> count, e.g. the client's stats) only feeds the message.
        """
        if failures < 0 or calls < 0 or failures > calls:
            raise ValueError(f"need 0 <= failures <= calls, got failures={failures}, calls={calls}")
        if calls == 0:
            return
        too_many = failures / calls > self.max_failure_fraction
        too_few = coverage is not None and coverage < self.min_coverage
        if not (too_many or too_few):
            self.bad_steps = 0
            return
        self.bad_steps += 1
        if self.bad_steps < self.patience:
            return
        detail = ""
        if kinds:
            top = sorted(((n, k) for k, n in kinds.items() if n > 0), reverse=True)[:3]
            detail = " (mostly " + ", ".join(f"{k}: {n}" for n, k in top) + ")"
        if too_many:
            what = f"failed {failures}/{calls} calls{detail} this step, more than {self.max_failure_fraction:.0%}"
            fix = "raise reward.thinking.max_failure_fraction"
        else:
            what = (
                f"failed {failures}/{calls} calls{detail} this step, so only {coverage:.0%} of the groups used the "
                f"thinking reward (reward.thinking.min_coverage={self.min_coverage:g})"
            )
            fix = "lower reward.thinking.min_coverage"
        raise RewardModelDown(
            f"the thinking reward model {what} for {self.bad_steps} consecutive steps; check the reward server "
            f"(`sophiavl serve-reward`, reward.thinking.url) or {fix} / reward.thinking.failure_patience"
        )
