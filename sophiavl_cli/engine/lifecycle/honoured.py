"""Recipe keys that cannot act in this run: said once at start, never silently ignored.

Most keys act everywhere. Some act only on a device, a rollout backend or with another key on
(`CONDITIONS`); a recipe that sets one of those (explicitly, in its YAML or on the command line)
where it cannot act gets one line naming the key and why. Keys at their defaults are not
reported: nobody asked for them. Keys that can never act are refused by the schema instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import BaseModel

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.models.families import PACKING_OFF_NOTE


@dataclass(frozen=True)
class RunFacts:
    """What a key's effect can depend on, known before the workers start."""

    device: str  # "cpu" | "cuda"
    flash_attn: bool
    linear_attention_model: str | None = None  # the policy's family name when it has linear-attention layers

    @classmethod
    def detect(cls, device: str, model_config: object | None = None) -> RunFacts:
        from sophiavl_cli.models.families import family_of, has_linear_attention

        hybrid = model_config is not None and has_linear_attention(model_config)
        return cls(
            device=device,
            flash_attn=importlib.util.find_spec("flash_attn") is not None,
            linear_attention_model=family_of(model_config).name if hybrid else None,
        )


Condition = Callable[[Recipe, RunFacts, object], str | None]  # (recipe, facts, value) -> None: it acts


def _on_gpu(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if value and facts.device != "cuda":
        return "GPU only (host memory is all there is on CPU); ignored"
    return None


def _vllm(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if recipe.worker.rollout.backend != "vllm":
        return "vLLM only; worker.rollout.backend=hf ignores it"
    return None


def _vllm_memory(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if facts.device != "cuda" and recipe.worker.rollout.kv_cache_memory_bytes is None:
        return (
            "vLLM on GPU only; on CPU the KV cache is worker.rollout.kv_cache_memory_bytes (default 128 MiB)"
        )
    return _vllm(recipe, facts, value)


def _vllm_sleep(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if value and facts.device != "cuda":
        return "vLLM sleeps on GPU only (its allocator is CUDA's); ignored on CPU"
    return _vllm(recipe, facts, value)


def _vllm_graphs(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if not value and facts.device != "cuda":
        return "CUDA graphs exist on GPU only; eager on CPU"
    return _vllm(recipe, facts, value)


def _packing(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if value and facts.linear_attention_model is not None:
        return PACKING_OFF_NOTE.format(name=facts.linear_attention_model)
    if value and (facts.device != "cuda" or not facts.flash_attn):
        return "needs flash-attn on GPU (packing under sdpa is slower); padded forwards instead"
    return None


def _bf16(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if value != "bf16" or facts.device == "cuda" or recipe.worker.actor.master_dtype == "bf16":
        return None
    return "bf16 training needs a GPU (or worker.actor.master_dtype=bf16); fp32 on CPU"


def _trust(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    return (
        None if recipe.algorithm.trust.enable else "algorithm.trust.enable=false: no thinking reward; unused"
    )


def _kl(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    algo = recipe.algorithm
    if (algo.use_kl_loss or algo.kl_in_reward) and algo.kl_coef > 0:
        return None
    return "the KL term is off (algorithm.use_kl_loss and kl_in_reward false, or kl_coef=0); unused"


def _kl_coef(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    return None if value == 0 else _kl(recipe, facts, value)  # kl_coef: 0 is how the KL is turned off


def _reinforce_gamma(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if recipe.algorithm.adv_estimator == "reinforce_plus_plus":
        return None
    return (
        f"only reinforce_plus_plus discounts returns (adv_estimator={recipe.algorithm.adv_estimator}); unused"
    )


def _dynamic_sampling(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    return (
        None
        if recipe.algorithm.dynamic_sampling.enable
        else "algorithm.dynamic_sampling.enable=false; unused"
    )


def _overlong(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    return None if recipe.reward.overlong.enable else "reward.overlong.enable=false; unused"


def _lora(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    return (
        None if recipe.worker.actor.lora.rank > 0 else "worker.actor.lora.rank=0 (full fine-tuning); unused"
    )


def _clipped(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    if recipe.worker.actor.policy_loss == "sapo":
        return (
            "policy_loss=sapo gates the ratio smoothly (tau_positive/tau_negative) and clips nothing; unused"
        )
    return None


def _symmetric_clip(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    actor = recipe.worker.actor
    if actor.clip_ratio_low is not None and actor.clip_ratio_high is not None:
        return "clip_ratio_low and clip_ratio_high are both set; unused"
    return _clipped(recipe, facts, value)


def _sapo(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    policy_loss = recipe.worker.actor.policy_loss
    return (
        None
        if policy_loss == "sapo"
        else f"only policy_loss=sapo has a gate temperature ({policy_loss}); unused"
    )


def _served_vllm(recipe: Recipe, facts: RunFacts, value: object) -> str | None:
    serve = recipe.reward.thinking.serve
    if serve is not None and serve.backend != "vllm":
        return "vLLM only; reward.thinking.serve.backend=hf ignores it"
    return _trust(recipe, facts, value)


# key (dotted path) or section prefix ending in ".": the condition under which it acts
CONDITIONS: dict[str, Condition] = {
    "worker.actor.fsdp.offload_params": _on_gpu,
    "worker.actor.fsdp.offload_optimizer": _on_gpu,
    "worker.ref.offload": _on_gpu,
    "worker.actor.padding_free": _packing,
    "worker.actor.dtype": _bf16,
    "worker.rollout.tensor_parallel_size": _vllm,
    "worker.rollout.max_num_batched_tokens": _vllm,
    "worker.rollout.enable_prefix_caching": _vllm,
    "worker.rollout.kv_cache_memory_bytes": _vllm,
    "worker.rollout.limit_images": _vllm,
    "worker.rollout.gpu_memory_utilization": _vllm_memory,
    "worker.rollout.enable_sleep_mode": _vllm_sleep,
    "worker.rollout.enforce_eager": _vllm_graphs,
    "reward.thinking.": _trust,
    "reward.thinking.serve.max_model_len": _served_vllm,
    "reward.thinking.serve.gpu_memory_utilization": _served_vllm,
    "algorithm.trust.": _trust,
    "algorithm.kl_penalty": _kl,
    "algorithm.kl_coef": _kl_coef,
    "algorithm.gamma": _reinforce_gamma,
    "algorithm.dynamic_sampling.max_extra_rounds": _dynamic_sampling,
    "reward.overlong.buffer_length": _overlong,
    "reward.overlong.penalty_factor": _overlong,
    "worker.actor.lora.alpha": _lora,
    "worker.actor.lora.dropout": _lora,
    "worker.actor.lora.target_modules": _lora,
    "worker.actor.clip_ratio": _symmetric_clip,
    "worker.actor.clip_ratio_low": _clipped,
    "worker.actor.clip_ratio_high": _clipped,
    "worker.actor.tau_positive": _sapo,
    "worker.actor.tau_negative": _sapo,
}


def explicit_keys(section: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaf keys a recipe set itself (YAML or overrides), not left at defaults."""
    for name in sorted(section.model_fields_set):
        value = getattr(section, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from explicit_keys(value, f"{path}.")
        else:
            yield path


def condition_of(key: str) -> Condition | None:
    if key in CONDITIONS:
        return CONDITIONS[key]
    return next((c for k, c in CONDITIONS.items() if k.endswith(".") and key.startswith(k)), None)


def unhonoured_keys(recipe: Recipe, facts: RunFacts) -> list[str]:
    """One line per explicitly set key that cannot act in this run (`key: why`)."""
    notes = []
    for key in explicit_keys(recipe):
        condition = condition_of(key)
        why = condition(recipe, facts, _value(recipe, key)) if condition is not None else None
        if why is not None and key != "algorithm.trust.enable":
            notes.append(f"{key}: {why}")
    return notes


def _value(recipe: Recipe, key: str) -> object:
    value: object = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value
