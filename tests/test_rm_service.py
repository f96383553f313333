"""The thinking RM endpoint of a run: configured, served because the recipe asks, or the run stops first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.reward_model.service import NO_ENDPOINT, ThinkingService
from sophiavl_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_with_no_url_no_env_and_no_serve_model_the_service_refuses_and_names_the_three_ways():
    cfg = load_recipe(None, []).reward.thinking
    assert cfg.serve_model is None  # no silent default model
    with pytest.raises(UserError) as info:
        ThinkingService(cfg, env={})
    message = str(info.value)
    assert "\n" not in message
    assert all(
        way in message for way in ("reward.thinking.url", "OPENAI_API_URL", "reward.thinking.serve_model")
    )


def test_an_endpoint_wins_over_serve_model_and_serve_model_alone_starts_a_server():
    named = load_recipe(None, ["reward.thinking.serve_model=builtin:tiny-qwen2.5-vl"]).reward.thinking
    assert ThinkingService(named, env={}).embedded
    assert not ThinkingService(named, env={"OPENAI_API_URL": "http://127.0.0.1:9/v1"}).embedded
    with_url = load_recipe(None, ["reward.thinking.url=http://127.0.0.1:9/v1"]).reward.thinking
    assert not ThinkingService(with_url, env={}).embedded


def test_fullsets_names_the_released_thinking_rm():
    recipe = load_recipe(ROOT / "recipes" / "fullsets.yaml", [])
    serve = recipe.reward.thinking.serve  # served by the run as a Ray actor (engine/reward_model/served.py)
    assert serve is not None and serve.model == "bunny127/SophiaVL-R1-Thinking-Reward-Model-3B"


def test_sophiavl_train_without_an_rm_endpoint_stops_before_ray_with_one_line(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENAI_API_URL"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sophiavl_cli",
            "train",
            str(ROOT / "recipes" / "quickstart.yaml"),
            "reward.thinking.serve_model=null",
            f"trainer.output_dir={tmp_path}",
            "--resume",
            "none",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert NO_ENDPOINT in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and "starting Ray" not in result.stdout + result.stderr
