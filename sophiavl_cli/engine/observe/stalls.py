"""Runs that train nothing, said while they run: every advantage 0 for several steps in a row.

`adv/zero_fraction` of 1.0 means no rollout moved the policy: every group's rewards were equal
(data too easy or too hard for the model, a reward that cannot tell the rollouts apart). It can
be legitimate for a step or two early on, so it is a notice, not a failure, and it is said once
per streak, when the streak reaches `patience` steps. Pure: the driver feeds it each step's value.
"""

from __future__ import annotations

ZERO_ADVANTAGE_PATIENCE = 3  # steps in a row before the notice


class ZeroAdvantageWatch:
    """Counts consecutive steps whose advantages were all zero; `update` returns the notice once."""

    def __init__(self, patience: int = ZERO_ADVANTAGE_PATIENCE) -> None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.patience = patience
        self.streak = 0
        self.first: int | None = None

    def update(self, step: int, zero_fraction: float | None) -> str | None:
        """The notice when this step makes `patience` all-zero steps in a row, else None."""
        if zero_fraction is None or zero_fraction < 1.0:
            self.streak, self.first = 0, None
            return None
        self.streak += 1
        self.first = step if self.first is None else self.first
        if self.streak != self.patience:
            return None
        return (
            f"adv/zero_fraction has been 1.0 for {self.streak} steps ({self.first}-{step}): every advantage is 0, "
            "so these steps trained nothing; each prompt's rollouts got equal rewards (data too easy or too hard "
            "for the model, or a reward that cannot tell them apart). Normal for a few early steps; if it lasts, "
            "check the rewards (rollouts/ and reward/* in metrics.jsonl)"
        )
