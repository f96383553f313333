"""LoRA through peft under FSDP2: adapters are all that trains, the rollout copy and `sophiavl
merge` get the merged weights, `--adapter-only` gives peft's folder, checkpoints hold the adapter
alone and resume from them is bit-identical.

Real TrainWorker in this process (a world of one, gloo), the built-in tiny Qwen2.5-VL (and tiny
Qwen3-VL for the update, the rollout sync and the merge).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_families import PATHS
from torch import nn
from worker_fixtures import cpu_worker_spec, free_port

from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.engine.checkpoint.integrity import verify_checkpoint
from sophiavl_cli.engine.checkpoint.merge import export_adapter, plan_merge, run_merge
from sophiavl_cli.engine.checkpoint.sharded import save_sharded
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.parallel.fsdp import full_tensors
from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.workers import lora
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.models.loading import load_vl_model
from sophiavl_cli.models.resolve import resolve_model

PROMPT = [5, 6, 7, 8, 9]
RANK, ALPHA = 4, 8.0


def _recipe(*extra: str):
    return load_recipe(
        None,
        [
            "trainer.n_workers_per_node=1",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.micro_batch_size_per_device_for_experience=4",
            "worker.actor.gradient_checkpointing=false",
            "worker.actor.optim.lr=5e-2",
            "algorithm.kl_coef=0",
            f"worker.actor.lora.rank={RANK}",
            f"worker.actor.lora.alpha={ALPHA}",
            *extra,
        ],
    )


def _worker(model_dir, recipe) -> TrainWorker:
    torch.set_num_threads(1)
    worker = TrainWorker(0, 1, {}, 1)
    worker.setup(cpu_worker_spec(recipe, model_dir, port=free_port()))
    return worker


@pytest.fixture(params=PATHS["LoRA"])
def lora_worker(request):
    """A LoRA worker on each family (Qwen3-VL: DeepStack mergers in the frozen vision tower; the MoE
    families: attention adapted, fused experts frozen; Qwen3.5: its full-attention layer adapted)."""
    ref = f"builtin:{request.param}"
    worker = _worker(resolve_model(ref), _recipe(f"worker.actor.model_path={ref}"))
    yield worker
    worker.shutdown()


def _sequences(seed: int) -> list[TrainSequence]:
    rng = np.random.default_rng(seed)
    return [TrainSequence(i, PROMPT, rng.integers(10, 60, size=2 + i).tolist(), None, None) for i in range(4)]


def _train(worker: TrainWorker, seed: int) -> None:
    worker.set_sequences(_sequences(seed))
    worker.compute_old_logprobs()
    assert worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)["actor/skipped"] == 0.0


def _saved_tensor_names(checkpoint) -> list[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return list(FileSystemReader(str(checkpoint / "dcp")).read_metadata().state_dict_metadata)


def _hub_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def _logits(model: nn.Module) -> torch.Tensor:
    ids = torch.tensor([[*PROMPT, 11, 12, 13]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()


def test_only_the_language_models_adapters_are_trainable(tiny_model_dir):
    model = load_vl_model(tiny_model_dir, dtype=torch.float32, device=torch.device("cpu"))
    targets = {
        name: (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in lora.DEFAULT_TARGETS
    }
    language = {n: shape for n, shape in targets.items() if ".visual." not in n}
    assert len(language) < len(targets)  # the vision tower has gate/up/down_proj too: never adapted
    lora.freeze_vision_tower(model)
    count = lora.apply_lora(model, rank=RANK, alpha=ALPHA, dropout=0.0, targets=lora.DEFAULT_TARGETS)
    assert count == sum(RANK * (fan_in + fan_out) for fan_in, fan_out in language.values())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(lora.is_lora_name(n) and ".visual." not in n for n in trainable)


def test_an_update_moves_only_adapters_and_the_rollout_gets_the_merged_weights(lora_worker):
    worker = lora_worker
    before = {n: t.clone() for n, t in full_tensors(worker.policy)}
    _train(worker, seed=1)
    after = dict(full_tensors(worker.policy))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".lora_B." in n or ".lora_A." in n for n in changed)
    assert not any(".visual." in n for n in changed)  # the vision tower is untouched
    adapter_params = [p for p in worker.policy.parameters() if p.requires_grad]
    assert len(worker.optimizer.state) == len(adapter_params)  # AdamW state only for adapters

    worker.sync_weights()
    merged = dict(lora.merged_tensors(full_tensors(worker.policy), ALPHA / RANK))
    copy = dict(worker.rollout.model.named_parameters())
    assert merged.keys() == copy.keys()
    assert all(torch.equal(copy[n], merged[n]) for n in merged)
    # the rollout copy scores tokens as the LoRA policy does
    outputs = worker.generate(
        [RolloutPrompt(index=0, prompt_ids=PROMPT)], 4, SamplingParams(6, return_logprobs=True), 3
    )
    worker.set_sequences(
        [TrainSequence(i, PROMPT, o.response_ids, None, None) for i, o in enumerate(outputs)]
    )
    with torch.no_grad():  # the old log-prob pass (an on-policy step like this one skips it)
        scored = worker._logprobs(worker.policy)
    for i, out in enumerate(outputs):
        np.testing.assert_allclose(scored[i], out.logprobs, atol=1e-5)


def test_merge_round_trip_and_adapter_only_give_the_policys_logits(lora_worker, tmp_path):
    from peft import PeftModel

    worker = lora_worker
    tiny_model_dir = Path(worker.spec.model_dir)
    _train(worker, seed=2)
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    tmp = manager.begin(1)
    worker.save_checkpoint(str(tmp))
    checkpoint = manager.commit(tmp, 1, {"step": 1}, tiny_model_dir, dump_recipe(worker.recipe))
    expected = _logits(worker.policy)

    plan = plan_merge(checkpoint, tmp_path / "merged")
    assert isinstance(plan.source, lora.LoraBaseSource)  # base from model_path + the saved adapter
    assert not any(lora.is_lora_name(n) or ".base_layer." in n for n in plan.renames.values())
    run_merge(plan)
    source_type = json.loads((tiny_model_dir / "config.json").read_text())["model_type"]
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["model_type"] == source_type
    merged = load_vl_model(tmp_path / "merged", dtype=torch.float32, device=torch.device("cpu"))
    torch.testing.assert_close(_logits(merged), expected, rtol=1e-5, atol=1e-5)
    assert _hub_shapes(tmp_path / "merged") == _hub_shapes(tiny_model_dir)  # MoE experts: the hub layout

    assert all(lora.is_lora_name(k) for k in _saved_tensor_names(checkpoint) if k.startswith("model."))
    # an older LoRA checkpoint, base weights included, merges to the same model and resumes too
    full = manager.begin(2)
    save_sharded(full, worker.policy, worker.optimizer)
    full = manager.commit(full, 2, {"step": 2}, tiny_model_dir, dump_recipe(worker.recipe))
    assert any(".base_layer." in k for k in _saved_tensor_names(full))
    run_merge(plan_merge(full, tmp_path / "merged-full"))
    merged_full = load_vl_model(tmp_path / "merged-full", dtype=torch.float32, device=torch.device("cpu"))
    assert all(torch.equal(t, merged.state_dict()[n]) for n, t in merged_full.state_dict().items())
    worker.load_checkpoint(str(full), 2, 1)
    torch.testing.assert_close(_logits(worker.policy), expected, rtol=0, atol=0)

    adapter = export_adapter(checkpoint, tmp_path / "adapter")
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    base = load_vl_model(tiny_model_dir, dtype=torch.float32, device=torch.device("cpu"))
    assert (_logits(base) - expected).abs().max() > 1e-3  # the adapter changed the model
    with_adapter = PeftModel.from_pretrained(base, str(adapter))
    torch.testing.assert_close(_logits(with_adapter), expected, rtol=1e-5, atol=1e-5)


def test_resume_from_a_lora_checkpoint_is_bit_identical(tiny_model_dir, tmp_path):
    recipe = _recipe()
    first = _worker(tiny_model_dir, recipe)
    try:
        _train(first, seed=3)
        manager = CheckpointManager(tmp_path / "checkpoints")
        tmp = manager.begin(1)
        first.save_checkpoint(str(tmp))
        checkpoint = manager.commit(tmp, 1, {"step": 1}, tiny_model_dir, dump_recipe(recipe))
        _train(first, seed=4)
        straight = {n: t.clone() for n, t in full_tensors(first.policy)}
    finally:
        first.shutdown()
    resumed = _worker(tiny_model_dir, recipe)
    try:
        resumed.load_checkpoint(str(checkpoint), 1, 1)
        _train(resumed, seed=4)
        again = dict(full_tensors(resumed.policy))
    finally:
        resumed.shutdown()
    assert straight.keys() == again.keys()
    assert all(torch.equal(straight[n], again[n]) for n in straight)

    # the checkpoint holds the adapter and its AdamW state only: the base came from model_path
    saved = _saved_tensor_names(checkpoint)
    model_keys = [k for k in saved if k.startswith("model.")]
    adapter_keys = {f"model.{n}" for n in straight if lora.is_lora_name(n)}
    assert set(model_keys) == adapter_keys
    assert all(lora.is_lora_name(k) for k in saved if k.startswith("optimizer.state."))
    shard_bytes = sum(f.stat().st_size for f in (checkpoint / "dcp").glob("*.distcp"))
    adapter_bytes = sum(t.numel() * t.element_size() for n, t in straight.items() if lora.is_lora_name(n))
    full_bytes = sum(t.numel() * t.element_size() for t in straight.values())
    assert 3 * adapter_bytes <= shard_bytes < full_bytes / 4  # adapter + AdamW moments, no base
    assert verify_checkpoint(checkpoint) is None  # the marker covers the adapter-only files


def test_merge_refuses_adapter_only_for_a_full_fine_tuning_checkpoint(tiny_model_dir, tmp_path):
    from sophiavl_cli.errors import UserError

    recipe = _recipe("worker.actor.lora.rank=0")
    worker = _worker(tiny_model_dir, recipe)
    try:
        manager = CheckpointManager(tmp_path / "checkpoints")
        tmp = manager.begin(1)
        worker.save_checkpoint(str(tmp))
        checkpoint = manager.commit(tmp, 1, {"step": 1}, tiny_model_dir, dump_recipe(recipe))
    finally:
        worker.shutdown()
    with pytest.raises(UserError, match="not a LoRA checkpoint"):
        export_adapter(checkpoint, tmp_path / "adapter")
    with pytest.raises(UserError, match=r"--base .*not a LoRA adapter checkpoint\); merge it without --base"):
        plan_merge(checkpoint, tmp_path / "merged", base=tiny_model_dir)


def test_an_adapter_checkpoint_needs_its_base_and_its_lora_setting(tiny_model_dir, tmp_path):
    from sophiavl_cli.errors import UserError

    worker = _worker(tiny_model_dir, _recipe())
    try:
        manager = CheckpointManager(tmp_path / "checkpoints")
        tmp = manager.begin(1)
        worker.save_checkpoint(str(tmp))
    finally:
        worker.shutdown()
    recipe = dump_recipe(_recipe(f"worker.actor.model_path={tmp_path / 'moved-base'}"))
    checkpoint = manager.commit(tmp, 1, {"step": 1}, tiny_model_dir, recipe)
    with pytest.raises(
        UserError, match=r"holds only the LoRA adapter.*pass --base FOLDER .*or --adapter-only"
    ):
        plan_merge(checkpoint, tmp_path / "merged")
    adapter = export_adapter(checkpoint, tmp_path / "adapter")  # the adapter alone needs no base
    assert (adapter / "adapter_model.safetensors").is_file()

    # the base moved: --base names it; a base with another config is refused before any weight is read
    from typer.testing import CliRunner

    from sophiavl_cli.cli.app import app

    merged = CliRunner().invoke(
        app, ["merge", str(checkpoint), "-o", str(tmp_path / "merged"), "--base", str(tiny_model_dir)]
    )
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["rope_theta"] = 123.0
    config["_name_or_path"], config["transformers_version"] = "elsewhere", "0.0"  # provenance: not compared
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UserError, match=r"--base .*not the model this adapter was trained on.*rope_theta 123\.0 vs"
    ):
        plan_merge(checkpoint, tmp_path / "merged-other", base=other)
    assert not (tmp_path / "merged-other").exists()
    peft_config = json.loads(
        (export_adapter(checkpoint, tmp_path / "a2", base=other) / "adapter_config.json").read_text()
    )
    assert peft_config["base_model_name_or_path"] == str(other)

    plain = _worker(tiny_model_dir, _recipe("worker.actor.lora.rank=0"))
    try:
        with pytest.raises(UserError, match=r"lacks .* another worker\.actor\.lora setting"):
            plain.load_checkpoint(str(checkpoint), 1, 1)
    finally:
        plain.shutdown()
