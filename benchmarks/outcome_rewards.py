"""Time outcome scoring of 1,000 mixed responses on one CPU core (target: under 2 s).

The data is shaped like one GRPO run's: 125 prompts x 8 rollouts (about 8 steps of the released
recipe's 16 x 8), the five built-in types in equal shares, each prompt's rollouts answering
from a few candidates (the ground truth in several forms, LaTeX included, and wrong values),
5% of responses malformed, every response with its own 60-200-word thinking. Values are random,
so sympy's caches cannot replay one prompt's comparisons for another.

Run: python benchmarks/outcome_rewards.py [--prompts 125] [--n 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from sophiavl_cli.rewards import score_outcome

WORDS = [
    "the",
    "chart",
    "shows",
    "a",
    "steady",
    "rise",
    "in",
    "sales",
    "over",
    "four",
    "quarters",
    "while",
    "costs",
    "fell",
    "sharply",
]
Pool = tuple[str, list[str]]  # (ground truth, candidate answers)


def _numerical(rng: random.Random) -> Pool:
    kind = rng.random()
    if kind < 0.4:  # integers
        v = rng.randint(1, 5000)
        return str(v), [str(v), f"{v}.0", f"{v:,}", str(v + rng.randint(1, 9)), str(v * 2)]
    if kind < 0.55:  # decimals with a unit
        x = round(rng.uniform(0.1, 99), 2)
        return f"{x}", [f"{x}", f"{x} cm", f"{x + 0.1:.2f}", f"{x * 10:.1f}"]
    if kind < 0.7:  # fractions vs decimals
        a, b = rng.randint(1, 19), rng.choice([2, 4, 5, 8, 20, 25])
        return f"{a / b:g}", [f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"{a / b:g}", f"\\frac{{{b}}}{{{a}}}"]
    if kind < 0.85:  # percentages
        p = rng.randint(1, 99)
        return str(p), [f"{p}%", f"{p}\\%", str(p), f"{p + 5}%"]
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])  # surds
    return f"{k}\\sqrt{{{m}}}", [
        f"{k}\\sqrt{{{m}}}",
        f"\\sqrt{{{k * k * m}}}",
        f"{k * math.sqrt(m):.4f}",
        f"{k + 1}\\sqrt{{{m}}}",
    ]


def _choice(rng: random.Random) -> Pool:
    truth = rng.choice("ABCD") if rng.random() < 0.8 else ", ".join(sorted(rng.sample("ABCD", 2)))
    first = truth[0]
    wrong = rng.choice([c for c in "ABCD" if c not in truth])
    return truth, [truth, f"({first})", f"{first}. 42 cm", f"Option {first}", wrong, f"{wrong}."]


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def _ocr(rng: random.Random) -> Pool:
    truth = _sentence(rng, 3, 15)
    variants = [truth]
    for _ in range(3):
        words = truth.split()
        for _ in range(rng.randint(1, 3)):
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        variants.append(" ".join(words))
    return truth, variants


def _free_form(rng: random.Random) -> Pool:
    return _sentence(rng, 5, 25), [_sentence(rng, 5, 25) for _ in range(4)]


MAKERS: dict[str, Callable[[random.Random], Pool]] = {
    "numerical": _numerical,
    "multiple choice": _choice,
    "OCR": _ocr,
    "free-form": _free_form,
    "text": _free_form,
}


WARM_UP = [
    ("10001", "10001", "numerical"),
    ("\\frac{1}{10001}", "10001", "numerical"),  # mathruler, then math-verify
    ("(Z)", "Z", "multiple choice"),
    ("warm up", "warm up", "OCR"),
    ("warming up", "warm up", "free-form"),
]


def make_samples(prompts: int, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(response, ground truth, problem_type) triples: `prompts` groups of `n` rollouts."""
    rng = random.Random(seed)
    types = list(MAKERS)
    samples = []
    for i in range(prompts):
        problem_type = types[i % len(types)]
        truth, candidates = MAKERS[problem_type](rng)
        for _ in range(n):
            answer = rng.choice(candidates)
            thinking = _sentence(rng, 60, 200)
            response = (
                f"<answer>{answer}</answer>"  # malformed: no think block
                if rng.random() < 0.05
                else f"<think>{thinking}</think>\n<answer>{answer}</answer>"
            )
            samples.append((response, f"<answer>{truth}</answer>", problem_type))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=125)
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    start = time.perf_counter()
    # One-time costs (library imports, math-verify's grammar, nltk's stemmer) are not per-response:
    # touch every path once, with values the timed data does not contain.
    for answer, truth, problem_type in WARM_UP:
        score_outcome(f"<think>x</think><answer>{answer}</answer>", truth, problem_type)
    warmup = time.perf_counter() - start

    samples = make_samples(args.prompts, args.n, seed=args.seed)
    per_type: dict[str, list[float]] = defaultdict(list)
    scores = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for response, truth, problem_type in samples:
        t0 = time.perf_counter()
        scores.append(score_outcome(response, truth, problem_type))
        per_type[problem_type].append(time.perf_counter() - t0)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    print(f"warm-up (imports, first use of each scorer): {warmup:.2f} s")
    print(
        f"scored {len(samples)} responses ({args.prompts} prompts x {args.n}) in {total:.3f} s "
        f"wall, {cpu:.3f} s CPU, on one core (target < 2 s)"
    )
    print(f"mean reward {statistics.fmean(scores):.3f}")
    for problem_type, times in per_type.items():
        print(
            f"  {problem_type:16s} n={len(times):4d}  total {sum(times):.3f} s  "
            f"mean {1000 * statistics.fmean(times):.2f} ms  max {1000 * max(times):.1f} ms"
        )


if __name__ == "__main__":
    main()
