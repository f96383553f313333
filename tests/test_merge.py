"""`sophiavl merge`: DCP and released-layout checkpoints of the tiny models -> Hugging Face folders.

Each family (Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5) is trained one step by 2 FSDP2 ranks,
merged and loaded back by transformers with bit-identical logits, and reloaded at world size 1
with identical optimizer state; the tests about merging itself use the Qwen2.5-VL checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import fsdp_fixtures as fx
import pytest
import torch
from model_families import PATHS
from safetensors import safe_open

from sophiavl_cli.cli.app import app
from sophiavl_cli.engine.checkpoint.layout import copy_hf_files
from sophiavl_cli.engine.checkpoint.merge import (
    default_output,
    find_default_checkpoint,
    merge_checkpoint,
    parse_size,
    plan_merge,
)
from sophiavl_cli.engine.checkpoint.sharded import save_sharded
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.resolve import resolve_model

HF_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}


def load_merged(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()


def saved_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names.update(handle.keys())
    return names


FAMILIES = PATHS["merge"]


@pytest.fixture(scope="module")
def checkpoint_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, dict]]:
    """builtin name -> a committed checkpoint of it trained one step by 2 FSDP2 ranks, and what rank 0
    observed; each model is trained once per module."""
    made: dict[str, tuple[Path, dict]] = {}

    def make(name: str) -> tuple[Path, dict]:
        if name not in made:
            model_dir = resolve_model(f"builtin:{name}")
            run_dir = tmp_path_factory.mktemp("run")
            out = tmp_path_factory.mktemp("observed")
            manager = CheckpointManager(run_dir / "checkpoints", save_limit=-1)
            tmp = manager.begin(1)
            fx.spawn(fx.train_vl_and_save, 2, str(model_dir), str(tmp), str(out))
            final = manager.commit(
                tmp, 1, {"data": {"position": 1}}, hf_source_dir=model_dir, recipe_yaml="{}\n"
            )
            made[name] = final, torch.load(out / "trained.pt")
        return made[name]

    return make


@pytest.fixture(scope="module")
def trained_checkpoint(checkpoint_of: Callable[[str], tuple[Path, dict]]) -> tuple[Path, dict]:
    """The tiny Qwen2.5-VL's checkpoint (`checkpoint_of`), for the tests about merging itself."""
    return checkpoint_of("tiny-qwen2.5-vl")


@pytest.mark.parametrize("name", FAMILIES)
def test_merged_model_gives_the_same_logits_as_the_trained_fsdp_model(
    checkpoint_of: Callable[[str], tuple[Path, dict]], name: str
) -> None:
    tiny_model_dir = resolve_model(f"builtin:{name}")
    checkpoint, trained = checkpoint_of(name)
    result = merge_checkpoint(checkpoint, dtype="fp32")
    assert result.output == checkpoint.parent.parent / "merged" / "global_step_1"
    assert HF_FILES | {"model.safetensors", "preprocessor_config.json"} <= set(result.files)
    assert saved_names(result.output) == saved_names(tiny_model_dir)  # hub names, as save_pretrained writes
    config = json.loads((result.output / "config.json").read_text())
    assert config["model_type"] == json.loads((tiny_model_dir / "config.json").read_text())["model_type"]
    with (
        safe_open(str(result.output / "model.safetensors"), "pt") as merged,
        safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as original,
    ):
        for key in saved_names(tiny_model_dir):  # the hub layout too (Qwen3-VL-MoE's experts are transposed)
            assert merged.get_slice(key).get_shape() == original.get_slice(key).get_shape(), key

    model = load_merged(result.output)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained["weights"][key]), key
    with torch.no_grad():
        logits = model(**fx.vl_inputs(str(tiny_model_dir))).logits
    if name == "tiny-qwen3-vl-moe":
        # the weights are equal (above); the experts' grouped matmul under FSDP2 rounds its last bits
        # differently from the plain module's (1.8e-7 here; two plain forwards agree exactly)
        torch.testing.assert_close(logits, trained["logits"], atol=1e-6, rtol=0)
    else:
        assert torch.equal(logits, trained["logits"])  # bit-identical: same weights, same CPU kernels
    original_model = load_merged(tiny_model_dir)
    assert not torch.equal(
        original_model.lm_head.weight, model.lm_head.weight
    )  # the step really changed the weights


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_vl_checkpoint_from_two_ranks_reloads_on_one_rank_with_identical_optimizer_state(
    checkpoint_of: Callable[[str], tuple[Path, dict]], name: str, tmp_path: Path
) -> None:
    checkpoint, trained = checkpoint_of(name)
    model_dir = resolve_model(f"builtin:{name}")
    fx.spawn(fx.reload_vl, 1, str(model_dir), str(checkpoint), str(tmp_path))
    fx.assert_identical(torch.load(tmp_path / "reloaded_vl_ws1.pt"), trained["state"])


def test_merge_writes_bf16_shards_with_an_index_when_the_model_is_large(
    trained_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    checkpoint, trained = trained_checkpoint
    result = merge_checkpoint(checkpoint, output=tmp_path / "hf", dtype="bf16", max_shard_size="100KB")
    index = json.loads((result.output / "model.safetensors.index.json").read_text())
    shards = sorted(result.output.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in trained["weights"].values())
    assert json.loads((result.output / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(result.output), dtype=torch.bfloat16)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained["weights"][name].to(torch.bfloat16)), name
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.slow
def test_tied_embeddings_are_stored_once_and_come_back_tied_with_the_same_logits(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from safetensors.torch import load_file, save_file

    tied_dir = tmp_path / "tied-model"  # the tiny VL with Qwen2.5-VL-3B's tie_word_embeddings
    shutil.copytree(tiny_model_dir, tied_dir)
    config = json.loads((tied_dir / "config.json").read_text())
    (tied_dir / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    weights = load_file(str(tied_dir / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(tied_dir / "model.safetensors"), metadata={"format": "pt"})

    manager = CheckpointManager(tmp_path / "checkpoints")
    tmp = manager.begin(1)
    fx.spawn(fx.train_vl_and_save, 2, str(tied_dir), str(tmp), str(tmp_path))
    result = merge_checkpoint(manager.commit(tmp, 1, {}, hf_source_dir=tied_dir), dtype="fp32")
    assert "lm_head.weight" not in saved_names(result.output)
    model = load_merged(result.output)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    with torch.no_grad():
        logits = model(**fx.vl_inputs(str(tied_dir))).logits
    assert torch.equal(logits, torch.load(tmp_path / "trained.pt")["logits"])


def test_released_easyr1_layout_with_dtensor_shards_merges_to_the_full_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    actor = tmp_path / "global_step_300" / "actor"
    actor.mkdir(parents=True)
    fx.spawn(fx.save_released_layout, 2, str(tiny_model_dir), str(actor), str(tmp_path))
    copy_hf_files(tiny_model_dir, actor / "huggingface")
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as handle:
        hub_names = set(handle.keys())
    rank_file = torch.load(actor / "model_world_size_2_rank_1.pt", weights_only=True, mmap=True)
    assert set(rank_file) == hub_names  # the fixture really is in the released naming

    result = merge_checkpoint(tmp_path / "global_step_300", dtype="fp32")
    assert result.output == tmp_path / "global_step_300" / "merged"
    assert "generation_config.json" in result.files  # the released merger dropped it
    full = torch.load(tmp_path / "released_full.pt")
    model = load_merged(result.output)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, full[name]), name


def test_merge_rejects_a_checkpoint_of_another_model_naming_the_keys(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints")
    model, optimizer = fx.tiny_net(seed=0, sharded=False)
    tmp = manager.begin(1)
    save_sharded(tmp, model, optimizer)
    checkpoint = manager.commit(tmp, 1, {}, hf_source_dir=tiny_model_dir)
    with pytest.raises(
        UserError, match=r"do not match .*config.json: missing \d+ .*unexpected 8 \(e\.g\. embed\.weight"
    ):
        plan_merge(checkpoint)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_an_incomplete_checkpoint_and_an_existing_output(
    trained_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    checkpoint, _ = trained_checkpoint
    broken = tmp_path / "checkpoints" / "global_step_1"
    shutil.copytree(checkpoint, broken)
    (broken / "complete").unlink()
    with pytest.raises(UserError, match="incomplete"):
        plan_merge(broken)
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        plan_merge(checkpoint, output=tmp_path / "taken")


def test_bare_merge_takes_the_latest_checkpoint_of_the_most_recent_run(
    trained_checkpoint: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    checkpoint, _ = trained_checkpoint
    runs = tmp_path / "runs"
    older = runs / "proj" / "old" / "checkpoints" / "global_step_1"
    newer = runs / "proj" / "new" / "checkpoints" / "global_step_3"
    shutil.copytree(checkpoint, older)
    shutil.copytree(checkpoint, newer)
    (newer.parent / "latest").write_text("global_step_3\n")
    (runs / "proj" / "new" / "checkpoints" / ".tmp-global_step_4-1").mkdir()  # an interrupted save
    past = time.time() - 3600
    os.utime(older, (past, past))
    assert find_default_checkpoint(runs) == newer

    monkeypatch.chdir(tmp_path)
    outcome = CliRunner().invoke(app, ["merge"])
    assert outcome.exit_code == 0, outcome.output
    assert "runs/proj/new/checkpoints/global_step_3" in outcome.output.replace("\n", "")
    assert (runs / "proj" / "new" / "merged" / "global_step_3" / "model.safetensors").is_file()
    assert CliRunner().invoke(app, ["merge", "--runs-dir", str(tmp_path / "empty")]).exit_code != 0


def test_shard_sizes_parse_decimal_and_binary_units() -> None:
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("100kb") == 100_000
    assert parse_size(1234) == 1234
    with pytest.raises(UserError, match="max-shard-size"):
        parse_size("lots")
    assert default_output(Path("/x/checkpoints/global_step_7")) == Path("/x/merged/global_step_7")


def test_merge_names_a_corrupt_file_in_one_line_and_merges_an_unmarked_checkpoint_only_with_force(
    trained_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    checkpoint, _ = trained_checkpoint
    corrupt = tmp_path / "corrupt" / "global_step_1"
    shutil.copytree(checkpoint, corrupt)
    shard = sorted((corrupt / "dcp").glob("*.distcp"))[-1]
    shard.write_bytes(b"")  # a disk that filled up during the save
    with pytest.raises(UserError, match=rf"cannot merge {corrupt}: {shard}: 0 bytes") as info:
        plan_merge(corrupt, output=tmp_path / "out1")
    assert "\n" not in str(info.value)

    unmarked = tmp_path / "unmarked" / "global_step_1"
    shutil.copytree(checkpoint, unmarked)
    (unmarked / "complete").unlink()
    with pytest.raises(UserError, match=r"no complete marker.*pass --force"):
        plan_merge(unmarked, output=tmp_path / "out2")
    result = merge_checkpoint(unmarked, output=tmp_path / "out2", force=True)
    assert (result.output / "model.safetensors").is_file()


def test_merge_checks_the_output_folder_is_writable_before_reading_the_checkpoint(
    trained_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    checkpoint, _ = trained_checkpoint
    unmarked = tmp_path / "global_step_1"
    shutil.copytree(checkpoint, unmarked)
    (unmarked / "complete").unlink()  # reading it would fail: the output must be checked first
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output's parent should be")
    with pytest.raises(
        UserError, match=r"cannot write here .*not a writable folder\); pass another --output"
    ):
        plan_merge(unmarked, output=blocker / "merged")
