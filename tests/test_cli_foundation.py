"""The CLI shell: version, help, doctor, recipe commands, and how user errors are shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sophiavl_cli import __version__

ROOT = Path(__file__).resolve().parents[1]


def sophiavl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess (exit codes and streams as users see them)."""
    import os

    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=120,
    )


def test_version_prints_the_package_version() -> None:
    result = sophiavl("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"sophiavl {__version__}"


def test_doctor_reports_each_component_and_never_prints_the_key() -> None:
    secret = "sk-test-very-secret-value"
    result = sophiavl(
        "doctor", "--json", env={"OPENAI_API_KEY": secret, "REWARD_MODEL": "thinking-reward-model"}
    )
    assert secret not in result.stdout + result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    for name in (
        "Python",
        "torch",
        "CUDA",
        "transformers",
        "ray",
        "vllm",
        "flash-attn",
        "matplotlib",
        "OPENAI_API_URL",
        "OPENAI_API_KEY",
        "REWARD_MODEL",
        "HF cache",
        "HF offline mode",
    ):
        assert name in checks
    assert checks["OPENAI_API_KEY"]["value"] == "set"
    assert checks["REWARD_MODEL"]["value"] == "thinking-reward-model"
    assert checks["torch"]["verdict"] == "ok"
    assert result.returncode == 0


def test_doctor_table_has_a_verdict_column() -> None:
    result = sophiavl("doctor")
    assert result.returncode == 0
    assert "verdict" in result.stdout and "transformers" in result.stdout


def test_recipe_validate_shows_a_summary_and_rejects_typos_in_one_line() -> None:
    ok = sophiavl("recipe", "validate", "recipes/quickstart.yaml", "worker.rollout.n=2")
    assert ok.returncode == 0 and "valid" in ok.stdout
    bad = sophiavl("recipe", "validate", "recipes/quickstart.yaml", "trainer.max_stepz=2")
    assert bad.returncode == 2
    assert "did you mean 'max_steps'" in bad.stderr and "Traceback" not in bad.stderr


def test_recipe_schema_is_json() -> None:
    result = sophiavl("recipe", "schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "sophiavl training recipe"


def test_doctor_reads_versions_without_importing_torch_or_transformers() -> None:
    """Versions come from package metadata; torch is imported only where a GPU driver is loaded."""
    from sophiavl_cli.doctor import _gpu_driver_present

    probe = (
        "import json, sys\n"
        "from sophiavl_cli.cli.app import main\n"
        "try:\n    main(['doctor', '--json'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'ray') if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert "transformers" not in imported and "ray" not in imported
    assert "torch" not in imported or _gpu_driver_present()
