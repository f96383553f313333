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


@pytest.fixture(scope="session")
def sophiavl_home_dir() -> Path:
    """The session's SOPHIAVL_HOME (built-in models live under builtin/)."""
    return Path(_SESSION_HOME)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The built-in tiny Qwen2.5-VL, built once per test session."""
    from sophiavl_cli.models import resolve_model

    return resolve_model("builtin:tiny-qwen2.5-vl")
