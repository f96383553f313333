"""The reward model under faults: the built-in server killed mid-run is restarted and the run says
so (a real server: the built-in tiny model in a child process on a loopback port, killed with
SIGKILL as the OOM killer would); a configured endpoint that cannot work (a closed port, a URL with
credentials, a wrong key) fails the pre-flight before Ray (real loopback servers and ports)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import ray_started
from rich.console import Console

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


def test_a_closed_port_is_reported_by_the_preflight_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    port = free_port()  # bound and released: nothing listens there
    code, out = _train(capsys, tmp_path, f"reward.thinking.url=http://127.0.0.1:{port}/v1")
    assert code == 2, out
    assert f"cannot start training: reward model endpoint http://127.0.0.1:{port}/v1 is unreachable" in out
    assert not ray_started() and not (tmp_path / "sophiavl").exists()  # not even the run folder


def test_a_url_with_user_and_password_is_refused_in_one_line_that_never_shows_them(
    models_server, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    url = f"http://rmuser:s3cret-pw-77@127.0.0.1:{models_server.port}/v1"
    code, out = _train(capsys, tmp_path, f"reward.thinking.url={url}")
    assert code == 2, out
    assert "reward.thinking.url: the URL carries credentials (user:password@)" in out
    assert "s3cret-pw-77" not in out and "rmuser" not in out and "Traceback" not in out
    assert models_server.seen_auth == [] and not ray_started()


def test_a_wrong_key_is_reported_by_the_preflight_and_the_right_one_passes(
    models_server, tmp_path, monkeypatch
):
    from sophiavl_cli.engine.lifecycle.preflight import reward_endpoint

    cfg = ThinkingRewardConfig(url=f"http://127.0.0.1:{models_server.port}/v1")
    with pytest.raises(UserError, match=r"refused the API key \(HTTP 401\)"):
        reward_endpoint(cfg, {"OPENAI_API_KEY": "sk-wrong"})
    reward_endpoint(cfg, {"OPENAI_API_KEY": "sk-right-key-5e1"})
    assert models_server.seen_auth == ["Bearer sk-wrong", "Bearer sk-right-key-5e1"]


# --------------------------------------------------------------------------- 7. a reward model slower than the timeout


class _SlowRM(ThreadingHTTPServer):
    """Lists the model at once; holds every chat call until `release` is set (then answers 0.5)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.release = threading.Event()
        self.posts = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that gave up leaves a broken pipe behind: expected here


class _SlowHandler(BaseHTTPRequestHandler):
    server: _SlowRM

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "thinking-reward-model", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.posts += 1
        self.server.release.wait()
        message = {"role": "assistant", "content": "<answer>0.5</answer>"}
        self._send({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]})


@pytest.fixture
def slow_rm() -> Iterator[_SlowRM]:
    server = _SlowRM()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_a_call_slower_than_the_timeout_is_tried_twice_not_max_retries_plus_one_times(slow_rm):
    """Five retries of a timeout made a step wait six timeouts before the failure policy heard of it."""
    from sophiavl_cli.rewards.thinking import ThinkingRewardClient

    client = ThinkingRewardClient(
        slow_rm.url, "thinking-reward-model", api_key="k", timeout=0.5, max_retries=5, backoff_base=0.01
    )
    try:
        results = client.score_many_sync([SAMPLE, SAMPLE])
    finally:
        client.close()
    assert [(r.score, r.failure, r.attempts) for r in results] == [(None, "timeout", 2)] * 2
    assert slow_rm.posts == 4


def test_the_progress_line_says_the_step_waits_on_the_reward_model(slow_rm, monkeypatch):
    from sophiavl_cli.engine import step
    from sophiavl_cli.engine.observe.loggers import ConsoleBackend
    from sophiavl_cli.rewards.thinking import ThinkingRewardClient

    monkeypatch.setattr(step, "WAIT_NOTE_S", 0.05)
    console = ConsoleBackend(log_freq=1, console=Console(file=io.StringIO()))
    console.start(total_steps=4)
    lines: list[str | None] = []
    said = threading.Event()

    def waiting(text: str | None) -> None:
        lines.append(text)
        console.note(text)
        if text is not None:
            said.set()

    client = ThinkingRewardClient(
        slow_rm.url, "thinking-reward-model", api_key="k", timeout=600, max_retries=0
    )
    try:
        rollouts = step.Rollouts([], [], [], None, [0, 1, 2], pending=client.submit([SAMPLE] * 3))  # type: ignore[arg-type]
        collector = threading.Thread(target=rollouts.collect, args=(waiting,))
        collector.start()
        assert said.wait(timeout=300), "no waiting line"
        shown = console._progress.tasks[0].description  # type: ignore[union-attr]
        assert shown.startswith("training: waiting on the reward model (3 calls, ")
        slow_rm.release.set()  # the handshake: answers only after the line was shown
        collector.join(timeout=300)
    finally:
        client.close()
        console.stop()
    assert lines[-1] is None and [r.score for r in rollouts.results] == [0.5, 0.5, 0.5]  # type: ignore[union-attr]
