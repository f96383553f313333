"""The reward model the run owns, under faults: the built-in server killed mid-run is restarted
and the run says so. A real server (the built-in tiny model in a child process on a loopback
port), killed with SIGKILL as the OOM killer would."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.engine.reward_model.service import ThinkingService
from sophiavl_cli.rewards.thinking import ThinkingSample

SAMPLE = ThinkingSample("What is 2 + 2?", "<think>2 + 2 = 4</think><answer>4</answer>")


@pytest.mark.slow
def test_the_builtin_reward_server_killed_mid_run_is_restarted_and_said(tiny_model_dir, caplog):
    cfg = ThinkingRewardConfig(serve_model=str(tiny_model_dir), timeout=30.0, max_retries=8)
    service = ThinkingService(cfg, env={}, health_interval=0.2, max_restarts=1)
    service.start()
    try:
        client = service.client()
        (first,) = client.score_many_sync([SAMPLE])
        assert first.score is not None, first
        old = service._server
        with caplog.at_level(logging.WARNING, logger="sophiavl_cli.engine.reward_model.watch"):
            os.kill(old.process.pid, signal.SIGKILL)
            assert service._watch.settled.wait(timeout=900), "no restart attempt"
        assert service._server is not old and service._server.running
        assert client.base_url == service._server.base_url
        messages = [r.getMessage() for r in caplog.records]
        assert "the built-in reward server died; restarting it (1 of 1)" in messages
        assert f"the built-in reward server is back at {service._server.base_url}" in messages
        (after,) = client.score_many_sync([SAMPLE])  # scored by the restarted server, same key
        assert after.score is not None, after
        assert client.stats()["rm/serve_restarts"] == 1.0
    finally:
        service.close()
    assert not service._server.running  # stopped at the end, not restarted again
