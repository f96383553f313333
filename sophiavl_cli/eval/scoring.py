"""Score responses: the official rules for every item, the judge only where a benchmark needs one.

Without a judge, MathVista, MathVerse and MathVision report the rule score and say so
(`scoring: rule-based`); with one, items the rules settle ("prefetch") skip the judge and the rest
are sent through a bounded thread pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from sophiavl_cli.eval.benchmarks.base import Benchmark, ItemScore, Sample
from sophiavl_cli.eval.judge import Judge

RULE_BASED = "rule-based"
OFFICIAL = "official rules"


def scoring_label(bench: Benchmark, judge: Judge | None) -> str:
    """How the numbers of `bench` were obtained, for the report."""
    if not bench.uses_judge:
        return OFFICIAL
    return f"judge:{judge.settings.model}" if judge is not None else RULE_BASED


def score_items(
    bench: Benchmark, samples: Sequence[Sample], responses: Mapping[str, str], judge: Judge | None = None
) -> list[ItemScore]:
    """One `ItemScore` per sample that has a response, in sample order."""
    answered = [s for s in samples if s.index in responses]
    if judge is None or not bench.uses_judge:
        return [bench.score(s, responses[s.index]) for s in answered]
    with ThreadPoolExecutor(max_workers=max(1, judge.settings.concurrency)) as pool:
        futures = [pool.submit(bench.judge_score, s, responses[s.index], judge.ask) for s in answered]
        return [future.result() for future in futures]
