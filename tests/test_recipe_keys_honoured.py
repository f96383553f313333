"""No recipe key silently ignored: every key of both shipped recipes acts, or the run says why at start."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.driver import ignored_options
from sophiavl_cli.engine.lifecycle.honoured import (
    CONDITIONS,
    RunFacts,
    condition_of,
    explicit_keys,
    unhonoured_keys,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    name: ROOT / "recipes" / f"{name}.yaml"
    for name in ("fullsets", "quickstart", "qwen3-vl-8b", "qwen3-vl-quickstart")
}
SOURCE = "\n".join(
    p.read_text(encoding="utf-8") for p in (ROOT / "sophiavl_cli").rglob("*.py") if p.parent.name != "config"
)
GPU = RunFacts(device="cuda", flash_attn=True)
GPU_NO_FLASH = RunFacts(device="cuda", flash_attn=False)
CPU = RunFacts(device="cpu", flash_attn=False)


def _single_choice(recipe, key: str) -> bool:
    """A key whose schema allows one value (e.g. `adv_estimator: grpo`) acts by construction."""
    section, _, field = key.rpartition(".")
    node = recipe
    for part in section.split("."):
        node = getattr(node, part)
    annotation = type(node).model_fields[field].annotation
    return get_origin(annotation) is Literal and len(get_args(annotation)) == 1


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_key_a_shipped_recipe_sets_is_read_by_the_engine(name):
    recipe = load_recipe(RECIPES[name], [])
    keys = [k for k in explicit_keys(recipe) if not _single_choice(recipe, k)]
    assert len(keys) > 20
    unread = [k for k in keys if not re.search(rf"\.{re.escape(k.rsplit('.', 1)[-1])}\b", SOURCE)]
    assert unread == []


def test_the_shipped_recipes_on_their_own_devices_ignore_nothing():
    assert unhonoured_keys(load_recipe(RECIPES["quickstart"], []), CPU) == []
    assert unhonoured_keys(load_recipe(RECIPES["fullsets"], []), GPU) == []
    assert unhonoured_keys(load_recipe(RECIPES["qwen3-vl-quickstart"], []), CPU) == []
    qwen3_vl_8b = load_recipe(RECIPES["qwen3-vl-8b"], [])
    assert unhonoured_keys(qwen3_vl_8b, GPU) == []
    fullsets = load_recipe(RECIPES["fullsets"], [])  # sized like fullsets: only the policy differs
    assert qwen3_vl_8b.worker.actor.model_path == "Qwen/Qwen3-VL-8B-Instruct"
    assert qwen3_vl_8b.worker.actor.optim == fullsets.worker.actor.optim
    assert (qwen3_vl_8b.data, qwen3_vl_8b.algorithm, qwen3_vl_8b.reward, qwen3_vl_8b.worker.rollout) == (
        fullsets.data,
        fullsets.algorithm,
        fullsets.reward,
        fullsets.worker.rollout,
    )


def test_fullsets_where_it_cannot_act_names_each_such_key_once():
    fullsets = load_recipe(RECIPES["fullsets"], [])
    assert [n.split(":")[0] for n in unhonoured_keys(fullsets, GPU_NO_FLASH)] == ["worker.actor.padding_free"]
    on_cpu = [n.split(":")[0] for n in unhonoured_keys(fullsets, CPU)]
    assert sorted(on_cpu) == sorted(
        [
            "worker.actor.dtype",
            "worker.actor.fsdp.offload_optimizer",
            "worker.actor.fsdp.offload_params",
            "worker.actor.padding_free",
            "worker.ref.offload",
            "worker.rollout.gpu_memory_utilization",
        ]
    )
    assert ignored_options(fullsets, "cpu") == unhonoured_keys(fullsets, RunFacts.detect("cpu"))


def test_quickstart_on_a_gpu_or_with_options_that_do_not_apply_says_so():
    quickstart = load_recipe(RECIPES["quickstart"], [])
    assert unhonoured_keys(quickstart, GPU) == []
    hf_with_vllm_keys = load_recipe(
        RECIPES["quickstart"],
        [
            "worker.rollout.tensor_parallel_size=2",
            "algorithm.trust.enable=false",
            "worker.actor.fsdp.full_shard=true",
        ],
    )
    notes = unhonoured_keys(hf_with_vllm_keys, CPU)
    keys = [n.split(":")[0] for n in notes]
    assert "worker.rollout.tensor_parallel_size" in keys
    assert "worker.actor.fsdp.full_shard" not in keys  # honoured everywhere (ZeRO-2 when false)
    assert {"reward.thinking.serve_model", "algorithm.trust.alpha"} <= set(
        keys
    )  # the trust section is unused
    assert "algorithm.trust.enable" not in keys
    assert len(keys) == len(set(keys))


def test_vllm_keys_of_a_reward_model_served_by_the_hf_backend_are_reported():
    vllm = load_recipe(RECIPES["fullsets"], ["reward.thinking.serve.max_model_len=16384"])
    assert not [n for n in unhonoured_keys(vllm, GPU) if n.startswith("reward.")]
    hf = load_recipe(
        RECIPES["fullsets"], ["reward.thinking.serve.backend=hf", "reward.thinking.serve.max_model_len=16384"]
    )
    notes = [n for n in unhonoured_keys(hf, GPU) if n.startswith("reward.")]
    assert notes == [
        "reward.thinking.serve.gpu_memory_utilization: vLLM only; reward.thinking.serve.backend=hf ignores it",
        "reward.thinking.serve.max_model_len: vLLM only; reward.thinking.serve.backend=hf ignores it",
    ]


def test_the_served_reward_models_vllm_gets_the_recipes_context_and_parallelism():
    from sophiavl_cli.engine.reward_model.served import served_vllm_args

    serve = load_recipe(
        RECIPES["fullsets"], ["reward.thinking.serve.max_model_len=16384"]
    ).reward.thinking.serve
    assert served_vllm_args(serve) == ["--tensor-parallel-size", "1", "--max-model-len", "16384"]
    default = load_recipe(RECIPES["fullsets"], []).reward.thinking.serve
    assert served_vllm_args(default) == ["--tensor-parallel-size", "1"]
    assert served_vllm_args(default.model_copy(update={"backend": "hf"})) == []


def test_a_key_at_its_default_is_never_reported():
    bare = load_recipe(None, ["trainer.device=cpu"])
    assert list(explicit_keys(bare)) == ["trainer.device"]
    assert unhonoured_keys(bare, CPU) == []  # padding_free and offload defaults are not the user's ask


def test_every_conditional_key_exists_in_the_schema():
    schema = set(explicit_keys(load_recipe(RECIPES["fullsets"], []))) | set(
        explicit_keys(load_recipe(RECIPES["quickstart"], []))
    )
    for key in CONDITIONS:
        if not key.endswith("."):
            section, _, field = key.rpartition(".")
            node = load_recipe(RECIPES["fullsets"], [])  # it has every optional section (serve too)
            for part in section.split("."):
                node = getattr(node, part)
            assert field in type(node).model_fields, key
    assert all(condition_of(k) is not None for k in schema if k.startswith("reward.thinking."))


@pytest.mark.parametrize("name", ["dapo", "gspo", "dr_grpo", "rloo", "cispo", "sapo"])
def test_the_algorithm_recipes_ignore_nothing_on_cpu(name):
    assert unhonoured_keys(load_recipe(ROOT / "recipes" / f"{name}.yaml", []), CPU) == []


def test_algorithm_keys_set_where_they_cannot_act_are_named():
    recipe = load_recipe(
        None,
        [
            "algorithm.gamma=0.9",
            "reward.overlong.buffer_length=8",
            "algorithm.dynamic_sampling.max_extra_rounds=1",
            "worker.actor.lora.alpha=32",
            "worker.actor.clip_ratio=0.3",
            "worker.actor.clip_ratio_low=0.2",
            "worker.actor.clip_ratio_high=0.28",
        ],
    )
    keys = [n.split(":")[0] for n in unhonoured_keys(recipe, CPU)]
    assert sorted(keys) == [
        "algorithm.dynamic_sampling.max_extra_rounds",
        "algorithm.gamma",
        "reward.overlong.buffer_length",
        "worker.actor.clip_ratio",
        "worker.actor.lora.alpha",
    ]


def test_clip_keys_under_sapo_and_sapo_temperatures_elsewhere_are_named():
    sapo = load_recipe(
        ROOT / "recipes" / "sapo.yaml", ["worker.actor.clip_ratio_high=0.28", "worker.actor.clip_ratio=0.3"]
    )
    assert sorted(n.split(":")[0] for n in unhonoured_keys(sapo, CPU)) == [
        "worker.actor.clip_ratio",
        "worker.actor.clip_ratio_high",
    ]
    cispo = load_recipe(ROOT / "recipes" / "cispo.yaml", ["worker.actor.tau_negative=2"])
    assert [n.split(":")[0] for n in unhonoured_keys(cispo, CPU)] == ["worker.actor.tau_negative"]


def test_padding_free_on_a_hybrid_model_says_once_that_it_runs_padded():
    """Qwen3.5's Gated DeltaNet layers would carry state across packed sequences (test_packed_forward):
    the worker runs padded forwards and the run says so at start, even where packing could run."""
    from sophiavl_cli.models.resolve import resolve_model

    fullsets = load_recipe(RECIPES["fullsets"], [])
    hybrid_gpu = RunFacts(device="cuda", flash_attn=True, linear_attention_model="Qwen3.5")
    assert unhonoured_keys(fullsets, hybrid_gpu) == [
        "worker.actor.padding_free: Qwen3.5 has linear-attention (Gated DeltaNet) layers whose state would "
        "cross packed sequences; padded forwards instead"
    ]
    assert (
        ignored_options(fullsets, "cuda", resolve_model("builtin:tiny-qwen3.5"))[0]
        == (unhonoured_keys(fullsets, hybrid_gpu)[0])
    )
    dense = resolve_model("builtin:tiny-qwen3-vl")
    assert ignored_options(fullsets, "cuda", dense) == ignored_options(fullsets, "cuda")
