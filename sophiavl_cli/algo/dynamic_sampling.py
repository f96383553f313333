"""DAPO's dynamic sampling: keep only groups whose final rewards differ, refill until full.

A group whose rollouts all got the same final reward has zero group-relative advantage: it
spends compute and teaches nothing (and under token-mean it dilutes the other groups). DAPO
drops such groups and samples more prompts until the batch holds `target` informative groups.

`GroupPool` is the bookkeeping, pure and deterministic: rounds are offered in order, kept groups
stay in (round, prompt) order, and the first `target` are used. When the round cap is reached
with too few, the batch is topped up with the dropped groups in the same order (they keep their
zero advantages), so the step keeps its shape; `filled` says whether that happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

TIE_TOLERANCE = 1e-9


def informative(rewards: Sequence[float]) -> bool:
    """Whether a group's final rewards are not all equal (a group of one never is).

    Example:
        >>> informative([1.0, 1.0]), informative([1.0, 0.0]), informative([0.3])
        (False, True, False)
    """
    return len(rewards) > 1 and max(rewards) - min(rewards) > TIE_TOLERANCE


@dataclass
class GroupPool:
    """Groups offered round by round; `take()` returns the `target` groups a step trains on."""

    target: int
    kept: list[tuple[int, int]] = field(default_factory=list)  # (round, group in round)
    dropped: list[tuple[int, int]] = field(default_factory=list)
    rounds: int = 0

    def offer(self, group_rewards: Sequence[Sequence[float]]) -> None:
        """One round's groups (final rewards per group, in prompt order)."""
        for g, rewards in enumerate(group_rewards):
            (self.kept if informative(rewards) else self.dropped).append((self.rounds, g))
        self.rounds += 1

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.target

    def take(self) -> list[tuple[int, int]]:
        """(round, group) of the groups to train on: kept ones first, then dropped ones if short."""
        chosen = self.kept[: self.target]
        if len(chosen) < self.target:
            chosen = chosen + self.dropped[: self.target - len(chosen)]
        return sorted(chosen)

    @property
    def filled(self) -> bool:
        """Whether `take()` had to use dropped groups (the round cap was hit)."""
        return len(self.kept) < self.target
