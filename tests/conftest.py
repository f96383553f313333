"""Shared test setup: offline hubs, quiet libraries, one sophiavl home per test session.

Environment variables are set at import, before any test module imports transformers, vLLM or
Ray, because those read them once. `SOPHIAVL_HOME` points at a session temp dir, so the built-in
tiny models are built once per session and never touch the user's cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
_SESSION_HOME = tempfile.mkdtemp(prefix="sophiavl-test-home-")
os.environ["SOPHIAVL_HOME"] = _SESSION_HOME


SLOW_TEST_TIMEOUT_S = 1800  # the default (pyproject `timeout`) is for fast tests


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` (a training run, a vLLM engine) get a longer timeout unless they set one."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def sophiavl_home_dir() -> Path:
    """The session's SOPHIAVL_HOME (built-in models live under builtin/)."""
    return Path(_SESSION_HOME)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The built-in tiny Qwen2.5-VL, built once per test session."""
    from sophiavl_cli.models import resolve_model

    return resolve_model("builtin:tiny-qwen2.5-vl")


@pytest.fixture(scope="module", autouse=True)
def _release_leftover_process_group():
    """An in-process vLLM engine initialises torch's default process group and leaves it behind when
    the module's engine fixture is torn down; the next module's in-process worker then cannot create
    its own. Module-scoped autouse fixtures tear down after the module's other fixtures."""
    yield
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    parallel_state = sys.modules.get("vllm.distributed.parallel_state")
    if parallel_state is not None:  # vLLM's own cleanup, so its exit-time shutdown finds nothing left to do
        parallel_state.cleanup_dist_env_and_memory()
    if dist.is_initialized():
        dist.destroy_process_group()
