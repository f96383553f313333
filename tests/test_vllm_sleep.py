"""vLLM sleep/wake order: the real `VLLMRollout` against a recording engine (vLLM's cumem allocator is GPU-only).

The fake keeps vLLM 0.32's rules strictly: a tag woken while resident raises (the real allocator
would map it twice), `wake_up()` without tags is refused (it re-maps everything), and generating or
loading weights needs the memory they use to be resident. Three training steps with a validation
after each sync must follow EasyR1's sequence: free the torch cache, wake weights, stream weights,
free the cache, wake the KV cache, generate, sleep.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sophiavl_cli.config.worker import RolloutConfig
from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.rollout.vllm import SLEEP_TAGS, VLLMRollout, engine_kwargs

pytest.importorskip("vllm")

PROMPT = [5, 6, 7, 8, 9]
EOS = 2


class RecordingLLM:
    """Records every memory and weight call; raises where real vLLM would map memory twice or use freed memory."""

    def __init__(self, calls: list[tuple[Any, ...]], **kwargs: Any) -> None:
        self.calls = calls
        self.kwargs = kwargs
        self.asleep: set[str] = set()
        self.llm_engine = SimpleNamespace(
            reset_encoder_cache=lambda: calls.append(("reset_encoder_cache",)),
            engine_core=SimpleNamespace(shutdown=lambda: calls.append(("shutdown",))),
        )

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if self.asleep:
            raise RuntimeError(f"sleep while {sorted(self.asleep)} already asleep")
        self.asleep = set(SLEEP_TAGS)
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        if tags is None:
            raise RuntimeError("wake_up() without tags re-maps every allocation, resident ones too")
        for tag in tags:
            if tag not in self.asleep:
                raise RuntimeError(f"double wake of {tag!r}: it is already mapped")
            self.asleep.discard(tag)
        self.calls.append(("wake_up", tuple(tags)))
        return not self.asleep

    def collective_rpc(self, method: str, kwargs: dict[str, Any]) -> None:
        assert method == "reload_weights"
        if "weights" in self.asleep:
            raise RuntimeError("weights loaded into released memory")
        weights = list(kwargs["weights_iterator"])
        assert all(t.dtype == torch.bfloat16 for _, t in weights)
        self.calls.append(("reload_weights", len(weights)))

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache",))
        return True

    def generate(self, requests: list[dict[str, Any]], params: list[Any], use_tqdm: bool) -> list[Any]:
        if self.asleep:
            raise RuntimeError(f"generate while {sorted(self.asleep)} asleep (vLLM's scheduler is paused)")
        self.calls.append(("generate", len(requests)))
        return [
            SimpleNamespace(
                prompt_token_ids=r["prompt_token_ids"],
                outputs=[SimpleNamespace(index=k, token_ids=[11, EOS], logprobs=None) for k in range(p.n)],
            )
            for r, p in zip(requests, params, strict=True)
        ]


@pytest.fixture
def engine(tiny_model_dir: Path):
    calls: list[tuple[Any, ...]] = []
    cfg = RolloutConfig(backend="vllm", tensor_parallel_size=1)
    rollout = VLLMRollout(
        cfg,
        tiny_model_dir,
        eos_token_ids=[EOS],
        dtype=torch.bfloat16,
        llm_factory=lambda **kwargs: RecordingLLM(calls, **kwargs),
        sleep_mode=True,
    )
    rollout.memory.free_cache = lambda: calls.append(("free_cache",))
    yield rollout, calls
    rollout.close()


def _generate(rollout: VLLMRollout, greedy: bool) -> None:
    sampling = SamplingParams(max_tokens=4, temperature=0.0 if greedy else 1.0)
    outputs = rollout.generate([RolloutPrompt(index=0, prompt_ids=PROMPT)], 1 if greedy else 2, sampling, 7)
    assert [o.response_ids for o in outputs] == [[11, EOS]] * (1 if greedy else 2)


def test_three_steps_with_validation_wake_each_released_tag_once_in_easyr1s_order(engine):
    rollout, calls = engine
    weights = [("model.embed_tokens.weight", torch.ones(4, 2)), ("lm_head.weight", torch.ones(4, 2))]
    for _ in range(3):
        _generate(rollout, greedy=False)  # rollout
        rollout.sync_weights(weights)  # after the update
        _generate(rollout, greedy=True)  # validation right after the sync

    wake_weights = [("free_cache",), ("wake_up", ("weights",))]
    wake_kv = [("free_cache",), ("wake_up", ("kv_cache",))]
    sync = [*wake_weights, ("reload_weights", 2), ("reset_encoder_cache",), ("reset_prefix_cache",)]
    first = [("generate", 1), ("sleep", 1), *sync, *wake_kv, ("generate", 1), ("sleep", 1)]
    later = [
        *wake_weights,
        *wake_kv,
        ("generate", 1),
        ("sleep", 1),
        *sync,
        *wake_kv,
        ("generate", 1),
        ("sleep", 1),
    ]
    assert calls == first + later + later
    assert rollout.memory.asleep == set(SLEEP_TAGS)


def test_a_sync_while_awake_wakes_nothing_and_a_sync_twice_wakes_weights_once(engine):
    rollout, calls = engine
    rollout.sync_weights([("lm_head.weight", torch.ones(2))])  # e.g. after loading a checkpoint
    assert [c[0] for c in calls] == ["reload_weights", "reset_encoder_cache", "reset_prefix_cache"]
    _generate(rollout, greedy=True)
    calls.clear()
    rollout.sync_weights([("lm_head.weight", torch.ones(2))])
    rollout.sync_weights([("lm_head.weight", torch.ones(2))])
    assert [c for c in calls if c[0] == "wake_up"] == [("wake_up", ("weights",))]


def test_without_sleep_mode_the_engine_never_sleeps_or_wakes(tiny_model_dir: Path):
    calls: list[tuple[Any, ...]] = []
    rollout = VLLMRollout(
        RolloutConfig(backend="vllm"),
        tiny_model_dir,
        eos_token_ids=[EOS],
        dtype=torch.bfloat16,
        llm_factory=lambda **kwargs: RecordingLLM(calls, **kwargs),
    )  # on CPU: the device rule turns sleep mode off
    _generate(rollout, greedy=False)
    rollout.sync_weights([("lm_head.weight", torch.ones(2))])
    _generate(rollout, greedy=True)
    assert not [c for c in calls if c[0] in ("sleep", "wake_up")]
    rollout.close()


def test_tensor_parallel_engines_turn_vllms_custom_all_reduce_off(tmp_path: Path):
    tp = engine_kwargs(
        RolloutConfig(backend="vllm", tensor_parallel_size=2),
        tmp_path,
        dtype=torch.bfloat16,
        max_model_len=64,
        on_cuda=True,
    )
    assert (
        tp["disable_custom_all_reduce"] is True and tp["distributed_executor_backend"] == "external_launcher"
    )
    single = engine_kwargs(
        RolloutConfig(backend="vllm"), tmp_path, dtype=torch.bfloat16, max_model_len=64, on_cuda=True
    )
    assert "disable_custom_all_reduce" not in single and single["enable_sleep_mode"] is True
