"""The metric registry: lookups, families, reductions and the generated docs page."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophiavl_cli.metrics.keys import ACTOR_GRAD_NORM, ACTOR_LR, ACTOR_SKIPPED, RM_FAILURES_FAMILY
from sophiavl_cli.metrics.registry import (
    METRICS,
    MetricDef,
    family_key,
    metric,
    namespaced,
    reduce,
    reduce_records,
    render_markdown,
    timing_key,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"


def test_every_reward_and_trust_metric_is_defined_with_a_meaning() -> None:
    for key in (
        "reward/outcome",
        "reward/thinking",
        "reward/final",
        "reward/format",
        "reward/accuracy",
        "trust/gamma",
        "trust/distrusted_fraction",
        "trust/mu_correct",
        "trust/mu_wrong",
        "trust/weight",
        "trust/fallback_groups",
        "rm/calls",
        "rm/failures",
        "rm/retries",
        "rm/latency_p50",
        "rm/latency_p95",
    ):
        definition = metric(key)
        assert definition.key == key
        assert definition.meaning.endswith(".")
    assert all(isinstance(d, MetricDef) and d.key == k for k, d in METRICS.items())


def test_family_keys_resolve_dynamic_members() -> None:
    assert metric("rm/failures/timeout").key == "rm/failures/<kind>"
    assert metric("rm/failures/http_503").reduction == "sum"
    with pytest.raises(KeyError):
        metric("rm/failures/timeout/extra")
    with pytest.raises(KeyError):
        metric("rm/failures/")


def test_unknown_metric_suggests_the_closest_keys() -> None:
    with pytest.raises(KeyError, match=r"unknown metric 'trust/gama'; did you mean 'trust/gamma'"):
        metric("trust/gama")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("trust/gamma", 0.4),  # mean
        ("rm/calls", 2.0),  # sum
        ("trust/weight", 0.0),  # last
        ("rm/latency_p95", 0.0),  # last
        ("rm/failures/timeout", 2.0),  # family: sum
    ],
)
def test_reduce_applies_the_metric_reduction(key: str, expected: float) -> None:
    assert reduce(key, [1.0, 1.0, 0.5, -0.5, 0.0]) == pytest.approx(expected)


@pytest.mark.parametrize(("reduction", "expected"), [("max", 3.0), ("min", -1.0)])
def test_reduce_supports_max_and_min(
    monkeypatch: pytest.MonkeyPatch, reduction: str, expected: float
) -> None:
    monkeypatch.setitem(METRICS, "test/x", MetricDef("test/x", reduction, "A test metric."))  # type: ignore[arg-type]
    assert reduce("test/x", [0.0, 3.0, -1.0]) == expected


def test_reducing_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        reduce("rm/calls", [])


def test_markdown_lists_every_metric_once() -> None:
    text = render_markdown()
    for key in METRICS:
        assert text.count(f"| `{key}` |") == 1
    assert "## trust" in text


def test_docs_metrics_page_matches_the_registry() -> None:
    if not DOCS.exists():
        pytest.skip("docs/metrics.md not written yet")
    assert DOCS.read_text(encoding="utf-8") == render_markdown(), (
        "docs/metrics.md is stale: python -m sophiavl_cli.metrics > docs/metrics.md"
    )


def test_records_from_steps_and_ranks_reduce_by_the_registry() -> None:
    """The worker's and the driver's one reduction: skipped is the max, lr the last, grad norm the mean."""
    steps = [
        {ACTOR_SKIPPED: 1.0, ACTOR_LR: 1e-4, ACTOR_GRAD_NORM: 2.0},
        {ACTOR_SKIPPED: 0.0, ACTOR_LR: 2e-4, ACTOR_GRAD_NORM: 4.0},
    ]
    rank = reduce_records(steps)
    assert rank == {ACTOR_SKIPPED: 1.0, ACTOR_LR: 2e-4, ACTOR_GRAD_NORM: 3.0}
    other = {ACTOR_SKIPPED: 0.0, ACTOR_LR: 2e-4, ACTOR_GRAD_NORM: 5.0, "rm/calls": 3.0}
    assert reduce_records([rank, other, {"rm/calls": 4.0}]) == {
        ACTOR_SKIPPED: 1.0,
        ACTOR_LR: 2e-4,
        ACTOR_GRAD_NORM: 4.0,
        "rm/calls": 7.0,
    }
    with pytest.raises(KeyError, match="unknown metric"):
        reduce_records([{"actor/skiped": 1.0}])


def test_keys_built_from_names_are_checked_against_the_registry() -> None:
    assert namespaced("actor", {"pg_loss": 1, "kl": 0.5}) == {"actor/pg_loss": 1.0, "actor/kl": 0.5}
    with pytest.raises(KeyError, match="did you mean"):
        namespaced("actor", {"pg_los": 1.0})
    assert family_key(RM_FAILURES_FAMILY, "timeout") == "rm/failures/timeout"
    with pytest.raises(KeyError):
        family_key(RM_FAILURES_FAMILY, "a/b")
    assert timing_key("save") == "timing/save" and timing_key("val") == "timing/val"
    with pytest.raises(KeyError):
        timing_key("sleep")
