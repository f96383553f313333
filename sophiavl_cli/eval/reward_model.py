"""`sophiavl eval-rm MODEL --data NAME`: score labelled rows with a reward model, report its quality.

MODEL is an OpenAI-compatible endpoint (`http://host:8000/v1`, e.g. a vLLM server of the released
`bunny127/SophiaVL-R1-Thinking-Reward-Model-3B`) or a model reference (folder, merged checkpoint,
`builtin:*`, alias, cached hub id), which is served for the evaluation by the same launcher
training uses (`serving.launcher`, hf backend on CPU, vllm when asked). Either way every row goes
through the thinking-reward client exactly as during training (same prompt, same constrained
choices, same score parser), and `rewards.rm_quality` gives the report SFT's held-out pass gives:
MAE, within 0.1, Spearman, confusion table by 0.1 bin, calibration PNG.

Usage:
    sophiavl eval-rm runs/sophiavl/thinking_rm_quickstart/merged --data builtin:thinking-demo@val
    sophiavl eval-rm http://127.0.0.1:8000/v1 --data thinking156k@test --served-name thinking-reward-model
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sophiavl_cli.data.rm_rows import RMRow, load_rm_rows
from sophiavl_cli.hub.names import RM_SERVED_NAME
from sophiavl_cli.rewards.rm_quality import RMQuality, rm_quality, write_report
from sophiavl_cli.rewards.thinking import ThinkingRewardClient, ThinkingSample


@dataclass(frozen=True)
class RMEvalResult:
    quality: RMQuality
    written: list[Path]
    endpoint: str
    failures: dict[str, int]


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def sample_of(row: RMRow) -> ThinkingSample:
    """The client's request for a row; embedded images are passed as their bytes."""
    images = [ref.get("bytes") or ref.get("path") if isinstance(ref, dict) else ref for ref in row.images]
    return ThinkingSample(row.question, row.reasoning, tuple(images))


def evaluate_reward_model(
    model: str,
    data: str,
    *,
    out_dir: Path,
    registry: Path | None = None,
    limit: int | None = None,
    served_name: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    backend: Literal["hf", "vllm"] = "hf",
    concurrency: int = 16,
    timeout: float = 120.0,
    env: Mapping[str, str] = os.environ,
    status: Any = None,
) -> RMEvalResult:
    """Score `data`'s rows with `model` (endpoint or reference) and write the report into `out_dir`."""
    say = status or (lambda text: None)
    rows = load_rm_rows(data, registry=registry, limit=limit)
    with ExitStack() as stack:
        if is_endpoint(model):
            client = ThinkingRewardClient(
                model,
                served_name or env.get("REWARD_MODEL") or RM_SERVED_NAME,
                api_key_env=api_key_env,
                concurrency=concurrency,
                timeout=timeout,
                env=env,
            )
        else:
            from sophiavl_cli.serving.launcher import start_reward_server

            say(f"serving {model} ({backend})")
            server = stack.enter_context(start_reward_server(model, backend=backend))
            client = ThinkingRewardClient(
                server.base_url,
                server.model,
                concurrency=concurrency,
                timeout=timeout,
                api_key=server.api_key,
            )
        stack.callback(client.close)
        client.health_check()
        say(f"scoring {len(rows)} rows at {client.base_url}")
        results = client.score_many_sync([sample_of(row) for row in rows])
        failures: dict[str, int] = {}
        for result in results:
            if result.failure:
                failures[result.failure] = failures.get(result.failure, 0) + 1
        endpoint = client.base_url
    quality = rm_quality([row.score for row in rows], [r.score for r in results])
    written = write_report(quality, out_dir, title=f"{Path(model).name or model} on {data}")
    return RMEvalResult(quality, written, endpoint, failures)
