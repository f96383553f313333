"""The reward model under faults: the built-in server killed mid-run is restarted and the run says
so (a real server: the built-in tiny model in a child process on a loopback port, killed with
SIGKILL as the OOM killer would); a configured endpoint that cannot work (a closed port, a URL with
credentials, a wrong key) fails the pre-flight before Ray (real loopback servers and ports)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sophiavl_cli.cli.app import main
from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.engine.reward_model.service import ThinkingService
from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards.thinking import ThinkingSample
from sophiavl_cli.serving.launcher import free_port

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
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


# --------------------------------------------------------------------------- 6. the endpoint, before Ray


class _ModelsOnly(ThreadingHTTPServer):
    """An OpenAI-style endpoint that lists the reward model and wants a key; records what it saw."""

    daemon_threads = True

    def __init__(self, key: str) -> None:
        super().__init__(("127.0.0.1", 0), _ModelsHandler)
        self.key = key
        self.seen_auth: list[str | None] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ModelsHandler(BaseHTTPRequestHandler):
    server: _ModelsOnly

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        header = self.headers.get("Authorization")
        self.server.seen_auth.append(header)
        ok = header == f"Bearer {self.server.key}"
        body = json.dumps(
            {"object": "list", "data": [{"id": "thinking-reward-model", "object": "model"}]}
            if ok
            else {"error": {"message": "bad key"}}
        ).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def models_server() -> Iterator[_ModelsOnly]:
    server = _ModelsOnly(key="sk-right-key-5e1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _train(capsys: pytest.CaptureFixture[str], tmp_path: Path, *overrides: str) -> tuple[int, str]:
    try:
        main(["train", str(QUICKSTART), f"trainer.output_dir={tmp_path}", *overrides])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def test_a_closed_port_is_reported_by_the_preflight_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    port = free_port()  # bound and released: nothing listens there
    code, out = _train(capsys, tmp_path, f"reward.thinking.url=http://127.0.0.1:{port}/v1")
    assert code == 2, out
    assert f"cannot start training: reward model endpoint http://127.0.0.1:{port}/v1 is unreachable" in out
    assert not _ray_started() and not (tmp_path / "sophiavl").exists()  # not even the run folder


def test_a_url_with_user_and_password_is_refused_in_one_line_that_never_shows_them(
    models_server, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    url = f"http://rmuser:s3cret-pw-77@127.0.0.1:{models_server.port}/v1"
    code, out = _train(capsys, tmp_path, f"reward.thinking.url={url}")
    assert code == 2, out
    assert "reward.thinking.url: the URL carries credentials (user:password@)" in out
    assert "s3cret-pw-77" not in out and "rmuser" not in out and "Traceback" not in out
    assert models_server.seen_auth == [] and not _ray_started()


def test_a_wrong_key_is_reported_by_the_preflight_and_the_right_one_passes(
    models_server, tmp_path, monkeypatch
):
    from sophiavl_cli.engine.lifecycle.preflight import reward_endpoint

    cfg = ThinkingRewardConfig(url=f"http://127.0.0.1:{models_server.port}/v1")
    with pytest.raises(UserError, match=r"refused the API key \(HTTP 401\)"):
        reward_endpoint(cfg, {"OPENAI_API_KEY": "sk-wrong"})
    reward_endpoint(cfg, {"OPENAI_API_KEY": "sk-right-key-5e1"})
    assert models_server.seen_auth == ["Bearer sk-wrong", "Bearer sk-right-key-5e1"]
