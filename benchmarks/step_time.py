"""Benchmark: one GRPO step of sophiavl vs TRL's GRPOTrainer on CPU, and the thinking-RM overlap.

Same workload on both sides: the built-in tiny Qwen2.5-VL, the image rows of builtin:demo@train in
file order (4 prompts per step, n = 4 rollouts each, at most 32 response tokens, images resized to
3,136-12,544 pixels), the SophiaVL-R1 prompt, KL to a frozen reference (0.04), lr 1e-4 constant,
no gradient checkpointing, the rule-based outcome reward. sophiavl runs as `sophiavl train` (2
Ray workers with one torch thread each, FSDP2 over gloo) and reports `timing/*` from
metrics.jsonl; TRL runs in one process with 2 torch threads, timed by wrapping its methods (its
"log-probs" row is the rest of `_generate_and_score_completions`: reference pass, processor,
advantages; its "update" row is the step minus that method). Each side runs `--rounds` times in
alternating order, so a change in the machine's load hits both alike.
TRL 1.16 cannot batch image prompts with text-only ones (it hands the processor `None` for the
text rows), so both sides use the 48 image rows only.

Second part: sophiavl with the thinking reward on, against a loopback RM that answers after
200 ms vs at once (the server of benchmarks/reward_client.py), on 8 prompts x 8 rollouts (the
paper's n = 8; 64 RM calls per step, 64 in flight). The RM calls are sent right after generation
and overlap the old/ref log-prob passes: the overlap hides up to the duration of those passes, so
the step should take at most 1.05x as long when they last at least as long as one RM call. The
table shows the share of the RM latency that was hidden.

Targets: sophiavl step <= 0.7x TRL's (issue 17; median over all counted steps, with each round's
ratio of medians for the range); 200 ms RM step <= 1.05x instant (issue 5).

Run (needs `pip install 'sophiavl[bench]'` for the TRL side):
    python benchmarks/step_time.py                      # 2 rounds, 10 steps per run, first 2 not counted
    python benchmarks/step_time.py --steps 6 --skip-trl
    python benchmarks/step_time.py --rounds 4 --skip-rm                # the TRL comparison only
    python benchmarks/step_time.py --set worker.rollout.use_rollout_logprobs=true   # any sophiavl override
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
PROMPTS_PER_STEP, N, MAX_RESPONSE, KL, LR = 4, 4, 32, 0.04, 1e-4
MIN_PIXELS, MAX_PIXELS = 3136, 12544
WORKERS = 2
RM_WORKLOAD = (  # the overlap part: n = 8 as in the paper, every RM call in flight at once
    "data.rollout_batch_size=8",
    "worker.actor.global_batch_size=8",
    "worker.rollout.n=8",
    "reward.thinking.concurrency=64",
)
# Rows of the comparison table: (label, sophiavl timing keys summed, TRL phase).
PHASES = [
    ("generate", ("gen",), "gen"),
    ("outcome rewards", ("reward",), "reward"),
    ("log-probs (old, ref) + advantages", ("old", "ref", "adv"), "logprobs"),
    ("update (+ weight sync)", ("update", "sync"), "update"),
    ("whole step", ("step",), "step"),
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ----------------------------------------------------------------------------- the workload


def write_image_rows(dest: Path) -> Path:
    """The image rows of builtin:demo@train, in order, as a JSON file both trainers read."""
    from sophiavl_cli.data.loader import load_rows

    keep = ("prompt", "answer", "images", "problem_type", "options")
    rows = [{k: row[k] for k in keep} for row in load_rows("builtin:demo@train") if row.get("images")]
    path = dest / "demo_image_rows.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- sophiavl


def run_sophiavl(rows: Path, out: Path, steps: int, *overrides: str) -> list[dict[str, Any]]:
    """`sophiavl train` on the quickstart recipe with the benchmark workload; metrics.jsonl rows."""
    command = [
        sys.executable, "-m", "sophiavl_cli", "train", str(QUICKSTART), f"trainer.output_dir={out}",
        f"data.train_files={rows}", "data.shuffle=false", "data.val_files=null", f"data.max_pixels={MAX_PIXELS}",
        f"data.min_pixels={MIN_PIXELS}", f"data.max_response_length={MAX_RESPONSE}",
        f"data.rollout_batch_size={PROMPTS_PER_STEP}", f"worker.actor.global_batch_size={PROMPTS_PER_STEP}",
        f"worker.rollout.n={N}", f"algorithm.kl_coef={KL}", f"worker.actor.optim.lr={LR}",
        "worker.actor.optim.lr_scheduler=constant", "worker.actor.gradient_checkpointing=false",
        f"trainer.n_workers_per_node={WORKERS}", f"trainer.max_steps={steps}", "trainer.val_freq=-1",
        "trainer.save_freq=-1", "trainer.total_epochs=5", "trainer.logger=[jsonl]", "--resume", "none", *overrides,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"sophiavl train failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    metrics = out / "sophiavl" / "quickstart" / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def sophiavl_steps(rows: list[dict[str, Any]], warmup: int) -> list[dict[str, float]]:
    """Seconds per table row for each counted step (after `warmup`), plus tokens and RM figures."""
    out = []
    for row in rows:
        if row["step"] <= warmup:
            continue
        record = {label: sum(row.get(f"timing/{k}", 0.0) for k in keys) for label, keys, _ in PHASES}
        record |= {
            "tokens": row["perf/tokens"],
            "reward wait": row["timing/reward"],
            "rm calls": row.get("rm/calls", 0.0),
        }
        out.append(record)
    return out


def medians(records: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in records) for key in records[0]}


# ----------------------------------------------------------------------------- TRL (in a subprocess)


def run_trl(
    rows: Path, steps: int, warmup: int, omp_wait_policy: str | None = None
) -> list[dict[str, float]]:
    """TRL in a fresh process; seconds per table row for each counted step, plus tokens.

    `omp_wait_policy` (OMP_WAIT_POLICY for that process): TRL runs one process with 2 torch
    threads, whose OpenMP workers spin between parallel regions by default; on a machine whose
    cores are oversubscribed by other jobs the spinning threads get descheduled and every
    parallel region waits for them (measured here at load ~15 on 2 cores: ~20 s per step spinning,
    ~2 s passive, ~3 s with one thread). sophiavl's workers run one thread each and do not hit this.
    """
    return run_in_process("--trl-worker", rows, steps, warmup, omp_wait_policy)


def run_bare(
    rows: Path, steps: int, warmup: int, omp_wait_policy: str | None = None
) -> list[dict[str, float]]:
    """The bare PyTorch loop (`bare_worker`) in a fresh process, reported like TRL."""
    return run_in_process("--bare-worker", rows, steps, warmup, omp_wait_policy)


def run_in_process(
    flag: str, rows: Path, steps: int, warmup: int, omp_wait_policy: str | None
) -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmp:
        result_file = Path(tmp) / "side.json"
        command = [sys.executable, __file__, flag, str(rows), str(result_file), "--steps", str(steps)]
        env = {**os.environ, **({"OMP_WAIT_POLICY": omp_wait_policy} if omp_wait_policy else {})}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=env)
        if result.returncode != 0:
            raise SystemExit(f"{flag} run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
        per_step = json.loads(result_file.read_text())
    return [
        {label: record[phase] for label, _, phase in PHASES} | {"tokens": record["tokens"]}
        for record in per_step[warmup:]
    ]


def trl_worker(rows_file: Path, result_file: Path, steps: int) -> None:
    """Train `steps` GRPO steps with TRL and write per-step phase seconds to `result_file`."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    try:
        from trl import GRPOConfig, GRPOTrainer
    except ImportError:
        raise SystemExit("TRL is not installed: pip install 'sophiavl[bench]'") from None
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from sophiavl_cli.data.images import load_image
    from sophiavl_cli.data.prompts import build_messages
    from sophiavl_cli.models.loading import load_vl_model
    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.rewards import score_outcome

    hf_logging.set_verbosity_error()
    torch.set_num_threads(WORKERS)  # the cores sophiavl's workers get
    model_dir = resolve_model("builtin:tiny-qwen2.5-vl")
    rows = json.loads(rows_file.read_text())
    dataset = Dataset.from_list(
        [
            {
                "prompt": build_messages(row, preset="sophiavl-r1", template=None),
                "images": [load_image(ref, where=str(rows_file)) for ref in row["images"]],
                "answer": row["answer"],
                "problem_type": row["problem_type"],
            }
            for row in rows
        ]
    )

    def outcome(completions: list[Any], answer: list[str], problem_type: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [score_outcome(t, a, p) for t, a, p in zip(texts, answer, problem_type, strict=True)]

    seconds: dict[str, float] = {}

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer with its rollout, generation and reward methods timed (behaviour unchanged)."""

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            with timed("rollout"):
                return super()._generate_and_score_completions(inputs)

        def _generate(self, prompts: Any) -> Any:
            with timed("gen"):
                return super()._generate(prompts)

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            with timed("reward"):
                return super()._calculate_rewards(*args, **kwargs)

    per_step: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seconds.clear()
            self.start = time.perf_counter()
            self.tokens = state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = time.perf_counter() - self.start
            rollout = seconds.get("rollout", 0.0)
            per_step.append(
                {
                    "gen": seconds.get("gen", 0.0),
                    "reward": seconds.get("reward", 0.0),
                    "logprobs": rollout - seconds.get("gen", 0.0) - seconds.get("reward", 0.0),
                    "update": step - rollout,
                    "step": step,
                }
            )

    with tempfile.TemporaryDirectory(prefix="trl-out-") as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=PROMPTS_PER_STEP * N,
            num_generations=N,
            max_completion_length=MAX_RESPONSE,
            beta=KL,
            learning_rate=LR,
            lr_scheduler_type="constant",
            temperature=1.0,
            top_p=1.0,
            max_grad_norm=4.0,
            gradient_checkpointing=False,
            shuffle_dataset=False,
            max_steps=steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            seed=1,
            disable_tqdm=True,
        )
        processor = image_only_processor(model_dir)
        trainer = TimedGRPOTrainer(
            model=load_vl_model(model_dir, dtype=torch.float32, device="cpu"),
            reward_funcs=outcome,
            args=config,
            train_dataset=dataset,
            processing_class=processor,
            callbacks=[StepClock()],
        )
        trainer.train()
        tokens = [float(entry["num_tokens"]) for entry in trainer.state.log_history if "num_tokens" in entry]
    for i, record in enumerate(per_step):  # num_tokens is cumulative
        record["tokens"] = tokens[i] - (tokens[i - 1] if i else 0.0) if i < len(tokens) else float("nan")
    result_file.write_text(json.dumps(per_step), encoding="utf-8")


def bare_worker(rows_file: Path, result_file: Path, steps: int) -> None:
    """The limit: the same step as a plain single-process PyTorch loop (no Ray, FSDP or process group).

    Same model, rows, prompts, sampling, micro-batches and loss as the sophiavl side (on-policy, so
    the old log-probs are the update's own, detached, as sophiavl and verl do; k3 KL to the frozen
    reference; token-mean over the mini-batch), with 2 torch threads (the cores sophiavl's two
    workers get). Generation runs on the policy itself, so there is no weight sync to pay.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sophiavl_cli.data.images import load_image
    from sophiavl_cli.data.prompts import build_messages
    from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids
    from sophiavl_cli.models.loading import load_vl_model
    from sophiavl_cli.models.processing import VLProcessor
    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.rewards import score_outcome

    torch.set_num_threads(WORKERS)
    torch.manual_seed(1)
    model_dir = resolve_model("builtin:tiny-qwen2.5-vl")
    processor = VLProcessor.from_pretrained(model_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    eos = stop_token_ids(model_dir, processor.tokenizer)
    pad = pad_token_id(processor.tokenizer, eos)
    policy = load_vl_model(model_dir, dtype=torch.float32, device="cpu")
    ref = load_vl_model(model_dir, dtype=torch.float32, device="cpu").requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LR, weight_decay=1e-2)
    rows = json.loads(rows_file.read_text())

    def token_logp(model: Any, batch: dict[str, Any], responses: torch.Tensor) -> torch.Tensor:
        logits = model(**batch, logits_to_keep=responses.shape[1] + 1).logits[:, :-1]
        return torch.gather(F.log_softmax(logits.float(), -1), -1, responses[..., None])[..., 0]

    per_step = []
    for step in range(steps):
        start = time.perf_counter()
        batch_rows = [rows[(step * PROMPTS_PER_STEP + i) % len(rows)] for i in range(PROMPTS_PER_STEP)]
        encoded = []
        for row in batch_rows:
            text = processor.apply_chat_template(build_messages(row, preset="sophiavl-r1", template=None))
            encoded += [processor.encode(text, [load_image(r, where="bench") for r in row["images"]])] * N
        width = max(len(e.input_ids) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e.input_ids)) + e.input_ids for e in encoded])
        mask = torch.tensor([[0] * (width - len(e.input_ids)) + [1] * len(e.input_ids) for e in encoded])
        pixels = torch.from_numpy(np.concatenate([e.pixel_values for e in encoded]))
        grid = torch.from_numpy(np.concatenate([e.image_grid_thw for e in encoded]))
        with torch.no_grad():
            out = policy.generate(
                input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid, do_sample=True,
                temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=MAX_RESPONSE, eos_token_id=eos,
                pad_token_id=pad, suppress_tokens=[processor.image_token_id, processor.video_token_id],
            )  # fmt: skip
        responses = out[:, width:]
        ended = torch.isin(responses, torch.tensor(eos)).int().cumsum(1)
        response_mask = ((ended == 0) | ((ended == 1) & torch.isin(responses, torch.tensor(eos)))).float()
        gen = time.perf_counter()
        texts = processor.tokenizer.batch_decode(responses * response_mask.long(), skip_special_tokens=True)
        rewards = torch.tensor(
            [score_outcome(t, r["answer"], r["problem_type"]) for t, r in zip(texts, [x for x in batch_rows for _ in range(N)], strict=True)]
        )  # fmt: skip
        reward = time.perf_counter()
        sequences = torch.cat([ids, responses], 1)
        full = {"input_ids": sequences, "mm_token_type_ids": (sequences == processor.image_token_id).int(),
                "attention_mask": torch.cat([mask, response_mask.long()], 1),
                "pixel_values": pixels, "image_grid_thw": grid}  # fmt: skip
        micro = [slice(i, i + 4) for i in range(0, len(encoded), 4)]  # micro_batch_size 4, as the recipe

        patches = np.cumsum([0] + [int(g.prod()) for g in grid])  # one image per sequence
        parts = [
            {"input_ids": full["input_ids"][sl], "attention_mask": full["attention_mask"][sl],
             "mm_token_type_ids": full["mm_token_type_ids"][sl],
             "pixel_values": pixels[patches[sl.start] : patches[sl.stop]], "image_grid_thw": grid[sl]}
            for sl in micro
        ]  # fmt: skip
        with torch.no_grad():
            ref_logp = torch.cat(
                [token_logp(ref, inputs, responses[sl]) for sl, inputs in zip(micro, parts, strict=True)]
            )
        grouped = rewards.view(PROMPTS_PER_STEP, N)
        advantages = (
            (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)
        ).flatten()
        logprobs = time.perf_counter()
        optimizer.zero_grad()
        tokens = response_mask.sum()
        for sl, inputs in zip(micro, parts, strict=True):
            logp = token_logp(policy, inputs, responses[sl])
            ratio = torch.exp(logp - logp.detach())  # on-policy: old = this pass, detached
            delta = ref_logp[sl] - logp
            kl = torch.exp(delta) - delta - 1  # k3 (low_var_kl)
            loss = ((-advantages[sl, None] * ratio + KL * kl) * response_mask[sl]).sum() / tokens
            loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 4.0)  # worker.actor.max_grad_norm
        optimizer.step()
        end = time.perf_counter()
        per_step.append({"gen": gen - start, "reward": reward - gen, "logprobs": logprobs - reward,
                         "update": end - logprobs, "step": end - start,
                         "tokens": float(full["attention_mask"].sum())})  # fmt: skip
    result_file.write_text(json.dumps(per_step), encoding="utf-8")


def image_only_processor(model_dir: Path) -> Any:
    """Qwen2.5-VL's processor for TRL without its video half, on transformers' PIL image processor.

    `AutoProcessor` also builds the Qwen2-VL video processor, which needs torchvision; PyPI's
    torchvision wheels are CUDA builds pinned to one torch release, so a CPU-torch venv either
    lacks torchvision or pulls a mismatched torch with it. The benchmark feeds no video, and the
    PIL image processor resizes exactly as sophiavl's own image path does (PIL bicubic), so both
    sides see the same pixels.
    """
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    images = Qwen2VLImageProcessorPil.from_pretrained(model_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return ImageOnlyProcessor(
        image_processor=images, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


# ----------------------------------------------------------------------------- the report


def rm_run(
    rows: Path, out: Path, steps: int, warmup: int, delay: float, extra: list[str]
) -> list[dict[str, float]]:
    """sophiavl with the thinking reward on, against the loopback RM answering after `delay` seconds."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reward_client import MODEL, start_server  # the slow loopback RM of the reward-client benchmark

    process, url = start_server(delay)
    try:
        metrics = run_sophiavl(
            rows,
            out,
            steps,
            "algorithm.trust.enable=true",
            f"reward.thinking.url={url}",
            f"reward.thinking.model={MODEL}",
            *RM_WORKLOAD,
            *extra,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    return sophiavl_steps(metrics, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per run (the data repeats after 12)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run not counted")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, in rotating order (load drift)")
    parser.add_argument("--rm-delay", type=float, default=0.2, help="latency of the slow RM (s)")
    parser.add_argument("--skip-trl", action="store_true", help="no TRL runs")
    parser.add_argument("--skip-bare", action="store_true", help="no bare-loop runs")
    parser.add_argument("--skip-rm", action="store_true", help="no thinking-RM overlap runs")
    parser.add_argument(
        "--omp-wait-policy",
        choices=["passive", "active"],
        default=None,
        help="OMP_WAIT_POLICY for the TRL and bare processes (passive on a shared, oversubscribed machine)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="sophiavl recipe override"
    )
    parser.add_argument("--trl-worker", nargs=2, type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bare-worker", nargs=2, type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker is not None:
        trl_worker(*args.trl_worker, args.steps)
        return
    if args.bare_worker is not None:
        bare_worker(*args.bare_worker, args.steps)
        return
    if args.steps <= args.warmup:
        raise SystemExit("--steps must be larger than --warmup")

    console = Console(width=max(120, Console().width))
    loads = [load_average()]
    if os.getloadavg()[0] > (os.cpu_count() or 1) and args.omp_wait_policy is None:
        console.print(
            f"[yellow]load average {loads[0]} on {os.cpu_count()} CPUs: the machine is busy. The TRL and bare "
            "processes run 2 OpenMP threads whose spinning collapses when cores are oversubscribed (several "
            "times slower), which flatters sophiavl's ratios; rerun on a quiet machine, or with "
            "--omp-wait-policy passive.[/]"
        )
    slow_name = f"{args.rm_delay * 1000:.0f} ms"
    sides = ["sophiavl"] + ([] if args.skip_bare else ["bare"]) + ([] if args.skip_trl else ["TRL"])
    records: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    round_steps: list[dict[str, float]] = []  # side -> median step of that round
    rm: dict[str, list[dict[str, float]]] = {"instant": [], slow_name: []}
    with tempfile.TemporaryDirectory(prefix="step-time-") as tmp_name:
        tmp = Path(tmp_name)
        rows = write_image_rows(tmp)
        for round_ in range(args.rounds):
            step: dict[str, float] = {}
            order = sides[round_ % len(sides) :] + sides[: round_ % len(sides)]  # each side leads in turn
            for side in order:
                console.print(f"[dim]round {round_ + 1}: {side} ...[/]")
                if side == "TRL":
                    got = run_trl(rows, args.steps, args.warmup, args.omp_wait_policy)
                elif side == "bare":
                    got = run_bare(rows, args.steps, args.warmup, args.omp_wait_policy)
                else:
                    out = tmp / f"sophiavl-{round_}"
                    got = sophiavl_steps(
                        run_sophiavl(rows, out, args.steps, "algorithm.trust.enable=false", *args.set),
                        args.warmup,
                    )
                records[side] += got
                step[side] = statistics.median(r["whole step"] for r in got)
                loads.append(load_average())
            round_steps.append(step)
            if args.skip_rm:
                continue
            latencies = [("instant", 0.0), (slow_name, args.rm_delay)]
            for name, delay in latencies if round_ % 2 == 0 else latencies[::-1]:
                console.print(f"[dim]round {round_ + 1}: sophiavl with a {name} thinking RM ...[/]")
                rm[name] += rm_run(
                    rows, tmp / f"rm-{round_}-{delay}", args.steps, args.warmup, delay, args.set
                )
                loads.append(load_average())
    report(
        console,
        args,
        {side: medians(r) for side, r in records.items()},
        {k: medians(v) for k, v in rm.items() if v},
        round_steps,
    )
    console.print(
        f"[dim]machine: {os.cpu_count()} CPUs; load average (1/5/15 min) before and after each run: "
        f"{' -> '.join(loads)}. The machine may be shared: compare ratios from one run, not seconds across "
        "runs.[/]"
    )


# Goals, sophiavl's whole step against each reference side (issue 20): at most 30% over the bare
# loop's arithmetic, and at most 0.7x TRL's step.
TARGETS = {"bare": ("bare loop", 1.3), "TRL": ("TRL GRPOTrainer", 0.7)}


def report(
    console: Console,
    args: argparse.Namespace,
    medians_by_side: dict[str, dict[str, float]],
    rm: dict[str, dict[str, float]],
    round_steps: list[dict[str, float]],
) -> None:
    counted = (args.steps - args.warmup) * args.rounds
    ours = medians_by_side["sophiavl"]
    others = [side for side in ("bare", "TRL") if side in medians_by_side]
    table = Table(
        title=f"GRPO step on CPU, tiny Qwen2.5-VL: {PROMPTS_PER_STEP} image prompts x {N} rollouts, "
        f"<= {MAX_RESPONSE} tokens, KL on, outcome reward only",
        caption=f"median seconds over {counted} steps per side ({args.rounds} runs of steps "
        f"{args.warmup + 1}-{args.steps}); ratio = sophiavl / that side (lower is better)",
    )
    table.add_column("phase")
    table.add_column("sophiavl (s)", justify="right")
    for side in others:
        table.add_column(f"{TARGETS[side][0]} (s)", justify="right")
        table.add_column(f"sophiavl / {side}", justify="right")
    for label, _, _ in PHASES:
        cells = [label, f"{ours[label]:.3f}"]
        for side in others:
            theirs = medians_by_side[side][label]
            cells += [f"{theirs:.3f}", f"{ours[label] / theirs:.2f}x" if theirs >= 1e-3 else "-"]
        table.add_row(*cells)
    if len(round_steps) > 1:
        cells = ["whole step, range of the run medians", _range([r["sophiavl"] for r in round_steps])]
        for side in others:
            cells += [_range([r[side] for r in round_steps]), ""]
        table.add_row(*cells)
    cells = ["tokens per step (prompt + response)", f"{ours['tokens']:.0f}"]
    for side in others:
        cells += [f"{medians_by_side[side]['tokens']:.0f}", ""]
    table.add_row(*cells)
    console.print(table)
    if args.set:
        console.print(f"[dim]sophiavl overrides: {' '.join(args.set)}[/]")
    verdicts = []
    for side in others:
        target = TARGETS[side][1]
        speed = ours["whole step"] / medians_by_side[side]["whole step"]
        ratios = [r["sophiavl"] / r[side] for r in round_steps]
        per_round = ", ".join(f"{x:.2f}x" for x in ratios)
        verdict = "[green]met[/]" if speed <= target else "[red]missed[/]"
        verdicts.append(
            f"sophiavl / {side} step {speed:.2f}x (per round: {per_round}; range {min(ratios):.2f}-"
            f"{max(ratios):.2f}x) (target <= {target}x): {verdict}"
        )
    if rm:
        console.print(_overlap_table(args, rm))
        base = rm["instant"]["whole step"]
        slow = next(v["whole step"] for name, v in rm.items() if name != "instant") / base
        verdict = "[green]met[/]" if slow <= 1.05 else "[red]missed[/]"
        verdicts.append(f"RM overlap {slow:.3f}x (target <= 1.05x): {verdict}")
    for line in verdicts:
        console.print(line)


def _range(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def _overlap_table(args: argparse.Namespace, rm: dict[str, dict[str, float]]) -> Table:
    overlap = Table(
        title="thinking-RM overlap: sophiavl step with a slow vs an instant loopback RM (8 prompts x 8 rollouts)",
        caption="hidden = share of the RM latency not added to the step: 1 - (step - instant step) / latency",
    )
    columns = (
        "RM latency",
        "step (s)",
        "waiting for the RM (s)",
        "log-probs (s)",
        "RM calls/step",
        "vs instant",
    )
    for column in (*columns, "hidden"):
        overlap.add_column(column, justify="left" if column == "RM latency" else "right")
    base = rm["instant"]["whole step"]
    for name, values in rm.items():
        hidden = 1 - (values["whole step"] - base) / args.rm_delay if name != "instant" else None
        overlap.add_row(
            name,
            f"{values['whole step']:.3f}",
            f"{values['reward wait']:.3f}",
            f"{values['log-probs (old, ref) + advantages']:.3f}",
            f"{values['rm calls']:.0f}",
            f"{values['whole step'] / base:.3f}x",
            "-" if hidden is None else f"{hidden:.0%}",
        )
    return overlap


if __name__ == "__main__":
    main()
