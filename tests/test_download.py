"""`sophiavl download` against a real loopback HTTP server speaking the hub's download protocol.

The real huggingface_hub client runs in a subprocess with `HF_ENDPOINT` pointing at the server
(tests/_loopback_hub.py), so URLs, headers, `Range` resume and the cache layout are the client's
own. No test touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _loopback_hub import FakeRepo, LoopbackHub
from data_fixtures import png_bytes, sophiavl_row

from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.download import DownloadTarget, resolve_target

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bunny127/SophiaVL-R1-7B"
BIG = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)  # 24 MiB: over two 10 MiB client chunks


def sophiavl(
    *args: str, hub: LoopbackHub, hf_home: Path, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "COLUMNS": "200",
        **env,
    }
    full_env.pop("HF_HUB_CACHE", None)
    full_env.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", "download", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=180,
    )


def release_130k() -> dict[str, bytes]:
    """A small data set in the SophiaVL-R1-130k layout: one json per category, image folders."""
    chart = [
        sophiavl_row(problem_id=1, problem="<image>Peak value?", path="Chart/images/c1.png"),
        sophiavl_row(
            problem_id=2,
            problem="<image>Which bar is tallest?",
            problem_type="multiple choice",
            options=["A. red", "B. blue"],
            solution="<answer>B</answer>",
            path="Chart/images/c2.png",
        ),
    ]
    ocr = [
        sophiavl_row(problem_id=3, problem="<image>Read the word.", problem_type="OCR",
                     solution="<answer>hello</answer>", path="OCR/images/o1.png"),
        sophiavl_row(problem_id=4, problem="<image>Read the sign.", problem_type="OCR",
                     solution="<answer>stop</answer>", path="OCR/images/missing.png"),  # planted fault
    ]  # fmt: skip
    return {
        "Chart.json": json.dumps(chart).encode(),
        "OCR.json": json.dumps(ocr).encode(),
        "Chart/images/c1.png": png_bytes(),
        "Chart/images/c2.png": png_bytes(color=(10, 10, 200)),
        "OCR/images/o1.png": png_bytes(size=(96, 32)),
        "README.md": b"# fixture\n",
    }


@pytest.fixture
def hub() -> Iterator[LoopbackHub]:
    repos = [
        FakeRepo(MODEL, {"config.json": b'{"model_type": "qwen2_5_vl"}', "model.safetensors": BIG},
                 drop_once={"model.safetensors"}),
        FakeRepo("owner/flaky", {"config.json": b"{}", "model.safetensors": BIG}, drop_once={"model.safetensors"},
                 dead_after_drop=5),
        FakeRepo("owner/gated", {"config.json": b"{}"}, gated=True),
        FakeRepo("owner/private", {"config.json": b"{}"}, status=401),
        FakeRepo("owner/huge", {"model.safetensors": b"x"}, claimed_sizes={"model.safetensors": 10**15}),
        FakeRepo("bunny127/SophiaVL-R1-130k", release_130k(), repo_type="dataset"),
    ]  # fmt: skip
    with LoopbackHub(repos) as server:
        yield server


def test_aliases_owner_names_and_builtins_resolve_to_repos() -> None:
    assert resolve_target(None) == DownloadTarget("sophiavl-r1-7b", MODEL, "model")
    assert resolve_target("thinking-rm").repo_id == "bunny127/SophiaVL-R1-Thinking-Reward-Model-3B"
    assert resolve_target("sophiavl-r1-130k").repo_type == "dataset"
    assert resolve_target("owner/data", "dataset") == DownloadTarget("owner/data", "owner/data", "dataset")
    assert resolve_target("builtin:demo").builtin
    with pytest.raises(UserError, match="is a dataset alias"):
        resolve_target("thinking-156k", "model")
    with pytest.raises(UserError, match="neither an alias"):
        resolve_target("not-a-repo")


def test_a_bare_download_fetches_sophiavl_r1_7b_resuming_the_dropped_file_with_a_range(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    result = sophiavl(hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    snapshot = Path(result.stdout.strip().splitlines()[-1])
    assert snapshot.is_relative_to(tmp_path / "hf" / "hub" / "models--bunny127--SophiaVL-R1-7B" / "snapshots")
    assert (snapshot / "model.safetensors").read_bytes() == BIG
    gets = [rng for path, rng in hub.requests("GET") if path.endswith("/model.safetensors")]
    assert gets[0] is None and gets[1] is not None and gets[1].startswith("bytes=")
    assert int(gets[1][len("bytes=") : -1]) > 0  # resumed from where the connection dropped

    # The cache now holds it: offline, the same command answers from the cache.
    again = sophiavl(hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip().splitlines()[-1]) == snapshot


def test_a_download_the_client_gives_up_on_completes_when_run_again(hub: LoopbackHub, tmp_path: Path) -> None:
    first = sophiavl(
        "owner/flaky", "--local-dir", str(tmp_path / "m"), hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path
    )
    assert first.returncode == 2
    error = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "run the same command again (finished files are kept)" in error[0]
    assert (tmp_path / "m" / "config.json").is_file()  # finished files are kept
    second = sophiavl(
        "owner/flaky", "--local-dir", str(tmp_path / "m"), hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == BIG
    assert not list((tmp_path / "m").rglob("*.incomplete"))


def test_local_dir_and_include_patterns_are_honoured(hub: LoopbackHub, tmp_path: Path) -> None:
    result = sophiavl("sophiavl-r1-7b", "--local-dir", str(tmp_path / "m"), "--include", "*.json",
                      hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "config.json").is_file() and not (tmp_path / "m" / "model.safetensors").exists()
    assert not (tmp_path / "hf" / "hub" / "models--bunny127--SophiaVL-R1-7B" / "snapshots").exists()
    nothing = sophiavl(
        "sophiavl-r1-7b", "--include", "*.gguf", hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path
    )
    assert nothing.returncode == 2 and "matches --include" in nothing.stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("owner/gated", "is gated: accept its terms"),
        ("owner/private", "needs a token (private or gated repo, 401"),
        ("owner/missing", "model owner/missing does not exist on http://127.0.0.1"),
        ("owner/huge", "free but the download needs 1.0 PB"),
    ],
)
def test_hub_failures_are_one_line_that_says_what_to_do(
    hub: LoopbackHub, tmp_path: Path, name: str, expected: str
) -> None:
    result = sophiavl(name, hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path, HF_TOKEN="hf_secret_value")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr and "hf_secret_value" not in result.stderr
    if name == "owner/missing":
        assert "sophiavl-r1-7b" in error_lines[0]  # suggests the aliases
    if name == "owner/huge":
        assert not any(
            path.endswith("model.safetensors") for path, _ in hub.requests("GET")
        )  # refused up front


def test_offline_mode_says_so_and_suggests_the_cache_or_a_folder(hub: LoopbackHub, tmp_path: Path) -> None:
    result = sophiavl("thinking-rm", hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert result.stderr.startswith("error: offline (HF_HUB_OFFLINE is set)")
    assert "--local-dir" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert hub.log == []  # not one request


def test_an_unwritable_destination_is_reported_before_downloading(hub: LoopbackHub, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = sophiavl("--local-dir", str(blocker / "model"), hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 2 and "cannot write to" in result.stderr
    assert hub.log == []


def test_register_after_the_130k_download_registers_each_category_and_checks_it(
    hub: LoopbackHub, tmp_path: Path
) -> None:
    registry = tmp_path / "dataset_info.json"
    args = [
        "sophiavl-r1-130k",
        "--local-dir",
        str(tmp_path / "130k"),
        "--register",
        "--registry",
        str(registry),
    ]
    result = sophiavl(*args, hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)
    entries = json.loads(registry.read_text())
    assert set(entries) == {"sophiavl-130k-chart", "sophiavl-130k-ocr"}
    chart = entries["sophiavl-130k-chart"]
    assert chart["columns"] == {"problem": "prompt", "solution": "answer", "path": "images"}
    assert chart["file_path"] == str((tmp_path / "130k" / "Chart.json").resolve())
    assert chart["image_base_path"] == str((tmp_path / "130k").resolve())
    assert "sophiavl-130k-chart" in result.stdout and "added" in result.stdout  # the check's table
    # The planted fault (an OCR row whose image the release lacks) fails the check, with a report.
    assert result.returncode == 1, result.stderr
    report = [
        json.loads(line)
        for line in (tmp_path / "dataset-check-sophiavl-130k-ocr.jsonl").read_text().splitlines()
    ]
    assert [(r["row"], r["faults"][0]["field"]) for r in report] == [(1, "images")]
    assert not (tmp_path / "dataset-check-sophiavl-130k-chart.jsonl").exists()

    # A rerun leaves the registry alone, and the client repairs a file damaged since the download.
    damaged = tmp_path / "130k" / "Chart" / "images" / "c1.png"
    damaged.write_bytes(b"not a png")
    later = time.time() + 5  # the client trusts files touched within 1 s of their download
    os.utime(damaged, (later, later))
    rerun = sophiavl(*args, hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)
    assert json.loads(registry.read_text()) == entries
    assert "unchanged" in rerun.stdout and "added" not in rerun.stdout
    assert damaged.read_bytes() == png_bytes()


def test_register_is_refused_for_a_model_before_anything_downloads(hub: LoopbackHub, tmp_path: Path) -> None:
    result = sophiavl("thinking-rm", "--register", hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path)
    assert result.returncode == 2 and "--register is for data sets" in result.stderr
    assert hub.log == []


def test_builtin_demo_and_tiny_model_materialise_into_a_folder(
    hub: LoopbackHub, tmp_path: Path, sophiavl_home_dir: Path
) -> None:
    registry = tmp_path / "dataset_info.json"
    env = {"SOPHIAVL_HOME": str(sophiavl_home_dir)}
    demo = sophiavl("builtin:demo", "--local-dir", str(tmp_path / "demo"), "--register", "--registry",
                    str(registry), hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path, **env)  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "train.json").is_file() and (tmp_path / "demo" / "images").is_dir()
    assert set(json.loads(registry.read_text())) == {"demo-train", "demo-val"}
    model = sophiavl("builtin:tiny-qwen2.5-vl", "--local-dir", str(tmp_path / "tiny"),
                     hub=hub, hf_home=tmp_path / "hf", cwd=tmp_path, **env)  # fmt: skip
    assert model.returncode == 0, model.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()
    }
    taken = sophiavl("builtin:demo", "--local-dir", str(tmp_path / "tiny"), hub=hub, hf_home=tmp_path / "hf",
                     cwd=tmp_path, **env)  # fmt: skip
    assert taken.returncode == 2 and "is not an empty folder" in taken.stderr
    assert hub.log == []
