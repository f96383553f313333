"""`sophiavl plan`: pure arithmetic in milliseconds, the CLI in a subprocess without torch.

Calibration against real tensors is in tests/test_plan_calibration.py; here: the phases follow the
recipe's switches, the peak per GPU never rises with more GPUs (for a model of every family),
suggestions really fit, the peers' published requirements in clear-cut cases, the family-specific
terms (all experts resident, only full-attention layers cached, a fixed state per sequence for the
linear-attention layers, hybrids never packed) and the command's output and exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_cli.config import load_recipe
from sophiavl_cli.errors import UserError
from sophiavl_cli.plan import architecture_of, plan_recipe
from sophiavl_cli.plan.gpus import GIB, gpu_by_name, gpu_with_memory
from sophiavl_cli.plan.memory import kv_capacity, micro_batch, plan_run
from sophiavl_cli.plan.suggest import with_overrides

ROOT = Path(__file__).resolve().parents[1]
FULLSETS = ROOT / "recipes" / "fullsets.yaml"
QWEN3_VL_8B_RECIPE = ROOT / "recipes" / "qwen3-vl-8b.yaml"
SEVEN_B = architecture_of("qwen2.5-vl-7b")
# one model per family the planner knows (shipped numbers: no download)
FAMILY_MODELS = ("qwen2.5-vl-7b", "qwen3-vl-8b", "qwen3-vl-30b-a3b", "qwen3.5-9b", "qwen3.5-35b-a3b")


def _fullsets(*overrides: str):
    return load_recipe(FULLSETS, list(overrides))


def _phases(plan) -> dict[str, float]:
    return {p.name: p.total for p in plan.phases}


def test_gpu_names_map_to_their_memory_and_an_unknown_card_says_how_to_give_it() -> None:
    assert gpu_by_name("h100").name == "H100-80GB"
    assert gpu_by_name("A100-40GB").total_gib == pytest.approx(40.0)
    assert gpu_by_name("rtx 4090").total_gib == pytest.approx(23.99, abs=0.01)
    assert gpu_with_memory(24).total_bytes == 24 * GIB
    with pytest.raises(UserError, match="--gpu-memory"):
        gpu_by_name("V100")


def test_offload_keys_take_their_states_out_of_the_phases_that_do_not_compute_with_them() -> None:
    gpu = gpu_by_name("H100-80GB")
    kept = plan_run(
        _fullsets(
            "worker.actor.fsdp.offload_params=false",
            "worker.actor.fsdp.offload_optimizer=false",
            "worker.ref.offload=false",
        ),
        SEVEN_B,
        gpu,
    )
    offloaded = plan_run(_fullsets(), SEVEN_B, gpu)
    generate = {p.name: p for p in kept.phases}["generate"].terms
    assert {"policy shards", "AdamW state", "reference shards"} <= set(generate)
    assert set({p.name: p for p in offloaded.phases}["generate"].terms) == {"vLLM (weights + KV cache)"}
    assert _phases(offloaded)["update"] < _phases(kept)["update"]  # the reference rests in host memory
    assert (
        offloaded.host_per_node["AdamW state"]
        == 8 * {p.name: p for p in kept.phases}["update"].terms["AdamW state"]
    )


def test_the_old_pass_runs_only_when_the_update_is_not_on_policy() -> None:
    gpu = gpu_by_name("H100-80GB")
    assert "old" not in _phases(plan_run(_fullsets(), SEVEN_B, gpu))  # one optimizer step per step
    two_steps = _fullsets("data.rollout_batch_size=32")
    assert "old" in _phases(plan_run(two_steps, SEVEN_B, gpu))
    assert "ref" not in _phases(plan_run(_fullsets("algorithm.kl_coef=0"), SEVEN_B, gpu))


def test_pure_bf16_and_lora_shrink_the_update_by_their_state_bytes() -> None:
    gpu = gpu_by_name("A100-40GB")
    mixed = {p.name: p for p in plan_run(_fullsets(), SEVEN_B, gpu).phases}["update"].terms
    bf16 = {p.name: p for p in plan_run(_fullsets("worker.actor.master_dtype=bf16"), SEVEN_B, gpu).phases}[
        "update"
    ]
    # 16 bytes a parameter (fp32 weight, gradient, two moments) become 10 (bf16 + a Kahan buffer)
    mixed_states = mixed["policy shards"] + mixed["gradients"] + mixed["AdamW state"]
    bf16_states = bf16.terms["policy shards"] + bf16.terms["gradients"] + bf16.terms["AdamW state"]
    assert bf16_states / mixed_states == pytest.approx(10 / 16, rel=1e-6)
    lora = {p.name: p for p in plan_run(_fullsets("worker.actor.lora.rank=64"), SEVEN_B, gpu).phases}[
        "update"
    ]
    assert lora.terms["AdamW state"] < mixed["AdamW state"] / 50


def test_keeping_blocks_gathered_costs_the_whole_model_in_the_compute_dtype_per_gpu() -> None:
    gpu = gpu_by_name("H100-80GB")
    full = {p.name: p for p in plan_run(_fullsets(), SEVEN_B, gpu).phases}["update"].terms
    zero2 = {
        p.name: p for p in plan_run(_fullsets("worker.actor.fsdp.full_shard=false"), SEVEN_B, gpu).phases
    }["update"].terms
    assert zero2["gathered (every block: full_shard=false)"] == SEVEN_B.params * 2  # bf16 compute
    assert full["gathered (root + 2 blocks)"] < SEVEN_B.params * 2 / 5


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["worker.actor.fsdp.offload_params=false", "worker.actor.fsdp.offload_optimizer=false"],
        ["worker.rollout.backend=hf"],
        ["worker.actor.gradient_checkpointing=false", "data.rollout_batch_size=64"],
        ["worker.actor.lora.rank=16", "worker.rollout.enable_sleep_mode=false"],
        ["worker.actor.max_tokens_per_micro_batch=20000", "worker.actor.master_dtype=bf16"],
    ],
)
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_the_peak_per_gpu_never_rises_when_gpus_are_added(model: str, overrides: list[str]) -> None:
    gpu = gpu_by_name("H100-80GB")
    arch = architecture_of(model)
    recipe = _fullsets(
        f"worker.actor.model_path={model}",
        "trainer.n_workers_per_node=1",
        "worker.rollout.tensor_parallel_size=1",
        *overrides,
    )
    previous = None
    for nodes in (1, 2, 4, 8, 16):
        for per_node in (1, 2, 4, 8):
            sized = with_overrides(
                recipe, [f"trainer.nnodes={nodes}", f"trainer.n_workers_per_node={per_node}"]
            )
            if sized is None:  # batch sizes that do not divide this world size
                continue
            plan = plan_run(sized, arch, gpu)
            phases = _phases(plan)
            if previous is not None and sized.world_size >= previous[0]:
                assert all(phases[name] <= previous[1][name] for name in phases), (nodes, per_node)
            previous = (sized.world_size, phases)


def test_moe_experts_are_all_resident_in_memory_and_only_the_routed_ones_count_as_flops() -> None:
    moe = architecture_of("qwen3-vl-30b-a3b")
    assert 31.0e9 < moe.params < 31.1e9  # the size the hub lists: every expert's weights
    assert moe.text.flops.decoder_params * 9 < moe.text.decoder_params  # top 8 of 128 experts compute
    update = {
        p.name: p
        for p in plan_run(
            _fullsets("worker.actor.model_path=qwen3-vl-30b-a3b"), moe, gpu_by_name("H200")
        ).phases
    }["update"].terms
    assert update["policy shards"] == -(-moe.params * 4 // 8)  # fp32 master weights over 8 GPUs
    assert update["AdamW state"] == 2 * update["gradients"] == 2 * update["policy shards"]


def test_only_full_attention_layers_hold_kv_cache_and_linear_ones_a_fixed_state_per_sequence() -> None:
    hybrid, dense = architecture_of("qwen3.5-9b"), architecture_of("qwen3-vl-8b")
    assert hybrid.text.full_attention_layers == 8 and len(hybrid.text.linear_layers) == 24
    assert hybrid.text.kv_bytes_per_token == 2 * 8 * (4 * 256) * 2  # keys and values, bf16
    assert (
        dense.text.kv_bytes_per_token == 2 * 36 * (8 * 128) * 2 and dense.text.state_bytes_per_sequence == 0
    )
    # 24 layers x (fp32 recurrent state 32 heads x 128 x 128 + bf16 conv window 3 x 8,192 channels)
    assert hybrid.text.state_bytes_per_sequence == 24 * (32 * 128 * 128 * 4 + 3 * 8192 * 2)
    per_token, state, length = hybrid.text.kv_bytes_per_token, hybrid.text.state_bytes_per_sequence, 9216
    one = length * per_token + state
    assert kv_capacity(one - 1, per_token, state, length, 0).starts is False  # the KV fits, its state not
    cache = kv_capacity(5 * one + 7, per_token, state, length, 0)
    assert cache.starts and cache.sequences == 5 and cache.tokens == (5 * one + 7 - 5 * state) // per_token


def test_hybrid_models_run_padded_micro_batches_even_with_padding_free() -> None:
    """Packed rows would carry one sequence's recurrent state into the next (`models/families.py`)."""
    recipe = _fullsets()
    assert recipe.worker.actor.padding_free
    assert micro_batch(recipe, architecture_of("qwen3-vl-8b"), 2, flash=True).packed
    padded = micro_batch(recipe, architecture_of("qwen3.5-9b"), 2, flash=True)
    assert not padded.packed and padded.flash  # no packing, and no dense mask under flash-attention


def test_patch_16_families_merge_32_pixel_units() -> None:
    vision = architecture_of("qwen3-vl-8b").vision
    assert vision.merged_unit == 32 and vision.deepstack_mergers == 3
    assert vision.patches(4_194_304) == 4_194_304 // 32**2 * 4  # fullsets' max_pixels: 4,096 tokens
    assert SEVEN_B.vision.merged_unit == 28 and SEVEN_B.vision.deepstack_mergers == 0


def test_every_suggestion_makes_the_plan_fit_at_the_peak_it_states() -> None:
    recipe = _fullsets()
    gpu = gpu_by_name("A100-40GB")
    plan, suggestions = plan_recipe(recipe, gpu)
    assert not plan.fits and suggestions
    assert suggestions[0].lever == "smaller micro-batches"  # the cheapest lever comes first
    for suggestion in suggestions:
        changed = with_overrides(recipe, suggestion.overrides)
        assert changed is not None
        replanned = plan_run(changed, SEVEN_B, gpu)
        assert replanned.training_fits and replanned.peak == suggestion.peak


def _easyr1(*overrides: str):
    """EasyR1's examples/config.yaml for Qwen2.5-VL-7B GRPO, in sophiavl's keys."""
    return load_recipe(
        None,
        [
            "worker.actor.model_path=qwen2.5-vl-7b",
            "data.max_prompt_length=2048",
            "data.max_response_length=2048",
            "data.rollout_batch_size=512",
            "worker.actor.global_batch_size=128",
            "worker.rollout.n=5",
            "worker.actor.micro_batch_size_per_device_for_update=1",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.actor.gradient_checkpointing=true",
            "worker.actor.fsdp.offload_params=true",
            "worker.actor.fsdp.offload_optimizer=true",
            "worker.ref.offload=true",
            "worker.rollout.backend=vllm",
            "worker.rollout.gpu_memory_utilization=0.6",
            "worker.rollout.tensor_parallel_size=2",
            "algorithm.kl_coef=0.01",
            *overrides,
        ],
    )


@pytest.mark.parametrize(
    "gpus,memory,overrides",
    [
        (8, 40, []),  # GRPO full fine-tuning, mixed precision: 8 x 40 GB
        (4, 40, ["worker.actor.master_dtype=bf16"]),  # pure bf16: 4 x 40 GB
    ],
    ids=["amp-8x40", "bf16-4x40"],  # LoRA on 2 x 32 GB is a near miss here, not clear-cut (docs/plan.md)
)
def test_easyr1s_published_requirements_for_7b_fit(gpus: int, memory: int, overrides: list[str]) -> None:
    recipe = _easyr1(f"trainer.n_workers_per_node={gpus}", *overrides)
    assert plan_run(recipe, SEVEN_B, gpu_with_memory(memory * 1e9 / GIB)).fits


def test_a_full_7b_update_in_mixed_precision_does_not_fit_on_two_40gb_cards() -> None:
    """The clear-cut other side: 16 bytes x 8.3B parameters over 2 GPUs is 66 GB a GPU before activations."""
    recipe = _easyr1("trainer.n_workers_per_node=2")
    assert not plan_run(recipe, SEVEN_B, gpu_with_memory(40 * 1e9 / GIB)).fits


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from sophiavl_cli.cli.app import main\n"
        "try:\n    main(sys.argv[1:])\n"
        "finally:\n    sys.stderr.write('\\nTORCH_IMPORTED=%s\\n' % ('torch' in sys.modules))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(ROOT / ".no-hf-cache"), COLUMNS="160")
    return subprocess.run(
        [sys.executable, "-c", code, "plan", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_the_served_reward_models_kv_cache_is_planned_for_its_max_model_len() -> None:
    gpu = gpu_by_name("H100-80GB")
    full, _ = plan_recipe(_fullsets(), gpu)
    short, _ = plan_recipe(_fullsets("reward.thinking.serve.max_model_len=16384"), gpu)
    assert full.served is not None and short.served is not None
    assert (full.served.kv.max_model_len, short.served.kv.max_model_len) == (128000, 16384)
    assert short.served.kv.tokens == full.served.kv.tokens  # the same cache, ...
    assert short.served.kv.sequences > full.served.kv.sequences  # ... holding more whole requests


def test_plan_fullsets_on_h100_prints_the_table_without_importing_torch() -> None:
    result = _cli(str(FULLSETS), "--gpu", "H100-80GB")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH_IMPORTED=False" in result.stderr
    assert "numbers shipped for Qwen/Qwen2.5-VL-7B-Instruct" in " ".join(result.stdout.split())
    for word in (
        "start",
        "generate",
        "ref",
        "update",
        "sync",
        "fits",
        "host memory per node",
        "reward model",
    ):
        assert word in result.stdout


def test_plan_json_has_the_verdict_the_peak_and_the_phases_and_exits_1_when_it_does_not_fit() -> None:
    result = _cli(str(FULLSETS), "--gpu", "A100-40GB", "--json")
    assert result.returncode == 1, result.stderr
    out = json.loads(result.stdout)
    assert out["fits"] is False
    assert out["peak_gib"] == max(out["phases"].values())
    assert {"start", "generate", "ref", "update", "sync"} <= set(out["phases"])
    assert out["suggestions"] and all(s["fits"] for s in out["suggestions"])
    fixed = _cli(str(FULLSETS), *out["suggestions"][0]["overrides"], "--gpu", "A100-40GB", "--json")
    assert fixed.returncode == 0 and json.loads(fixed.stdout)["fits"] is True


def test_plan_of_the_qwen3_vl_recipe_works_offline_from_shipped_numbers() -> None:
    result = _cli(str(QWEN3_VL_8B_RECIPE), "--gpu", "H100-80GB", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH_IMPORTED=False" in result.stderr
    out = json.loads(result.stdout)
    assert out["fits"] is True
    assert out["peak_gib"] == max(out["phases"].values()) > 0
    assert {"start", "generate", "ref", "update", "sync"} <= set(out["phases"])
    assert out["model"]["model_type"] == "qwen3_vl"
    assert out["model"]["params"] == architecture_of("Qwen/Qwen3-VL-8B-Instruct").params
    assert "numbers shipped for Qwen/Qwen3-VL-8B-Instruct" in out["model"]["source"]


def test_plan_without_a_card_or_with_an_unknown_model_says_what_to_do() -> None:
    result = _cli(str(FULLSETS))
    assert result.returncode == 2 and "--gpu" in result.stderr
    unknown = _cli(str(FULLSETS), "worker.actor.model_path=someone/unknown-vl", "--gpu", "H100")
    assert unknown.returncode == 2 and "sophiavl download" in " ".join(unknown.stderr.split())
