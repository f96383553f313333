"""The thinking-reward client against a real, scripted HTTP server on loopback.

Each test scripts what the server answers to the next requests (500, 429, a hang, a dropped
connection, garbage, 1.7, 401, another model name) and checks the client retries or counts it as
specified: nothing crashes, nothing is scored 0 silently, the key never leaks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.data.prompts import RM_SYSTEM_PROMPT, rm_user_text
from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards.failure_policy import FailureMonitor, RewardModelDown
from sophiavl_cli.rewards.rm_request import normalize_base_url
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES, parse_score
from sophiavl_cli.rewards.thinking import ThinkingRewardClient, ThinkingSample

SECRET = "sk-test-secret-4c1d9e"
MODEL = "thinking-reward-model"


# --------------------------------------------------------------------------- scripted server


class ScriptedRM(ThreadingHTTPServer):
    """An OpenAI-style server whose next answers are scripted: "reply:<text>", "status:<code>",
    "hang:<seconds>", "close", "plain:<text>". Unscripted requests get `<answer>0.7</answer>`."""

    daemon_threads = True

    def __init__(self, *, served: tuple[str, ...] = (MODEL,), key: str | None = SECRET, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.served = served
        self.key = key
        self.delay = delay
        self.script: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout, cancel) leaves a broken pipe behind: expected here."""
        return

    def next_action(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else "reply:<answer>0.7</answer>"


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedRM

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        return

    def _send(self, code: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization")
        self.server.auth_headers.append(header)
        if self.server.key is None or header == f"Bearer {self.server.key}":
            return True
        self._send(401, json.dumps({"error": {"message": "bad key", "code": 401}}).encode())
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "test"} for name in self.server.served
        ]
        self._send(200, json.dumps({"object": "list", "data": data}).encode())

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append(body)
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            if self._authorised():
                self._act(self.server.next_action(), body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _act(self, action: str, body: dict[str, Any]) -> None:
        kind, _, arg = action.partition(":")
        if kind == "echo":  # score = (number in "question N") / 100, to check results keep input order
            number = re.search(r"Question: question (\d+)", body["messages"][1]["content"][0]["text"])
            kind, arg = "reply", f"<answer>{int(number.group(1)) / 100}</answer>" if number else "?"
        if self.server.delay:
            time.sleep(self.server.delay)
        if kind == "hang":
            time.sleep(float(arg))
            kind, arg = "reply", "<answer>0.5</answer>"
        if kind == "close":
            self.close_connection = True
        elif kind == "retry-after":  # 429 asking for a wait of `arg` seconds
            self._send(429, b'{"error": {"message": "slow down"}}', **{"Retry-After": arg})
        elif kind == "status":
            self._send(
                int(arg),
                b'{"error": {"message": "scripted"}}',
                **({"Retry-After": "0"} if arg == "429" else {}),
            )
        elif kind == "plain":
            self._send(200, arg.encode(), content_type="text/plain")
        else:
            completion = {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": self.server.served[0],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": arg}}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            self._send(200, json.dumps(completion).encode())


@pytest.fixture
def rm() -> Iterator[ScriptedRM]:
    server = ScriptedRM()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make_client(url: str, **kwargs: Any) -> ThinkingRewardClient:
    options: dict[str, Any] = {"timeout": 2.0, "max_retries": 2, "backoff_base": 0.01, "backoff_max": 0.05}
    options.update(kwargs)
    return ThinkingRewardClient(url, MODEL, api_key=options.pop("api_key", SECRET), **options)


def samples(n: int = 1, images: list[Any] | None = None) -> list[ThinkingSample]:
    return [
        ThinkingSample(f"question {i}", f"<think>step {i}</think><answer>2</answer>", images or [])
        for i in range(n)
    ]


def score(client: ThinkingRewardClient, batch: list[ThinkingSample]) -> list[Any]:
    return client.submit(batch).result(timeout=60)


# --------------------------------------------------------------------------- faults


def test_a_500_is_retried_and_the_next_answer_is_scored(rm: ScriptedRM) -> None:
    rm.script.extend(["status:500", "reply:<answer>0.75</answer>"])
    with make_client(rm.url) as client:
        [result] = score(client, samples())
        stats = client.stats()
    assert (result.score, result.failure, result.attempts) == (0.75, None, 2)
    assert stats["rm/retries"] == 1 and stats["rm/failures"] == 0


def test_a_429_is_retried_then_a_persistent_one_is_counted_as_http_429(rm: ScriptedRM) -> None:
    rm.script.extend(["status:429"] * 3)
    with make_client(rm.url, max_retries=2) as client:
        [result] = score(client, samples())
        stats = client.stats()
    assert result.score is None and result.failure == "http_429" and result.attempts == 3
    assert stats["rm/failures/http_429"] == 1 and stats["rm/retries"] == 2


def test_a_429_retry_after_header_sets_the_least_wait(rm: ScriptedRM) -> None:
    rm.script.extend(["retry-after:0.5"])
    with make_client(rm.url, backoff_base=0.001, backoff_max=5.0) as client:
        [result] = score(client, samples())
    assert result.score == 0.7 and result.attempts == 2 and result.latency_s >= 0.5


def test_persistent_5xx_fails_with_no_score_instead_of_zero(rm: ScriptedRM) -> None:
    rm.script.extend(["status:503"] * 10)
    with make_client(rm.url, max_retries=1) as client:
        [result] = score(client, samples())
    assert result.score is None and result.failure == "http_5xx" and result.attempts == 2


def test_a_server_hanging_past_the_timeout_is_a_timeout_failure(rm: ScriptedRM) -> None:
    rm.script.extend(["hang:3", "hang:3"])
    with make_client(rm.url, timeout=0.3, max_retries=1) as client:
        [result] = score(client, samples())
    # a client that waited out the 3 s hang would have got the 0.5 reply
    assert result.failure == "timeout" and result.attempts == 2 and result.score is None


def test_a_hang_then_an_answer_recovers_on_retry(rm: ScriptedRM) -> None:
    rm.script.extend(["hang:2"])
    with make_client(rm.url, timeout=0.3, max_retries=1) as client:
        [result] = score(client, samples())
    assert result.score == 0.7 and result.attempts == 2


def test_a_dropped_connection_is_a_connection_failure_after_retries(rm: ScriptedRM) -> None:
    rm.script.extend(["close"] * 3)
    with make_client(rm.url, max_retries=2) as client:
        [result] = score(client, samples())
        stats = client.stats()
    assert result.failure == "connection" and result.attempts == 3
    assert stats["rm/failures/connection"] == 1


def test_garbage_text_is_unparseable_and_not_retried(rm: ScriptedRM) -> None:
    rm.script.extend(["reply:I think the reasoning is decent overall."])
    with make_client(rm.url) as client:
        [result] = score(client, samples())
    assert (result.score, result.failure, result.attempts) == (None, "unparseable", 1)


def test_a_non_json_body_is_a_bad_response_not_a_crash(rm: ScriptedRM) -> None:
    rm.script.extend(["plain:<html>proxy error</html>"])
    with make_client(rm.url) as client:
        [result] = score(client, samples())
    assert result.score is None and result.failure == "bad_response" and result.attempts == 1


def test_a_score_of_1_7_is_out_of_range(rm: ScriptedRM) -> None:
    rm.script.extend(["reply:<answer>1.7</answer>"])
    with make_client(rm.url) as client:
        [result] = score(client, samples())
    assert (result.score, result.failure) == (None, "out_of_range")


def test_an_unreachable_endpoint_fails_every_call_with_connection(rm: ScriptedRM) -> None:
    dead = ScriptedRM()  # bound, then closed: nothing listens on its port
    url = dead.url
    dead.server_close()
    with make_client(url, max_retries=1) as client:
        results = score(client, samples(3))
    assert [r.failure for r in results] == ["connection"] * 3


def test_a_wrong_key_gets_401_without_retry_and_the_key_never_appears(
    rm: ScriptedRM, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-77aa31"
    caplog.set_level(logging.DEBUG)
    with make_client(rm.url, api_key=wrong) as client:
        [result] = score(client, samples())
        with pytest.raises(UserError) as health:
            client.health_check()
        text = " ".join([repr(client), str(result), str(health.value), caplog.text, str(client.stats())])
    assert result.failure == "http_4xx" and result.attempts == 1
    assert "401" in str(health.value) and "OPENAI_API_KEY" in str(health.value)
    assert rm.auth_headers[0] == f"Bearer {wrong}"  # the key is sent ...
    assert wrong not in text and SECRET not in text  # ... and shown nowhere


def test_the_key_is_sent_as_bearer_and_absent_from_debug_logs(
    rm: ScriptedRM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rm.script.extend(["status:500", "reply:nonsense"])
    with make_client(rm.url) as client:
        score(client, samples())
        shown = repr(client)
    assert rm.auth_headers and all(h == f"Bearer {SECRET}" for h in rm.auth_headers)
    assert "thinking RM" in caplog.text  # the failures were logged ...
    assert SECRET not in caplog.text and SECRET not in shown  # ... without the key


def test_without_a_key_no_authorization_header_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # the library's own fallback must not pick it up
    server = ScriptedRM(key=None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with ThinkingRewardClient(server.url, MODEL, env={}, timeout=2.0) as client:
            [result] = score(client, samples())
            assert client.health_check() == [MODEL]
    finally:
        server.shutdown()
        server.server_close()
    assert result.score == 0.7
    assert server.auth_headers == [None, None]


# --------------------------------------------------------------------------- health check


def test_health_check_returns_the_served_models(rm: ScriptedRM) -> None:
    with make_client(rm.url) as client:
        assert client.health_check() == [MODEL]


def test_health_check_names_the_models_another_server_serves(rm: ScriptedRM) -> None:
    rm.served = ("qwen2.5-vl-3b", "other-model")
    with make_client(rm.url) as client, pytest.raises(UserError) as info:
        client.health_check()
    message = str(info.value)
    assert "\n" not in message and "qwen2.5-vl-3b, other-model" in message and repr(MODEL) in message


def test_health_check_of_an_unreachable_endpoint_names_the_url() -> None:
    dead = ScriptedRM()
    url = dead.url
    dead.server_close()
    with make_client(url) as client, pytest.raises(UserError) as info:
        client.health_check()
    assert url in str(info.value) and "unreachable" in str(info.value)


# --------------------------------------------------------------------------- requests


def test_the_request_has_the_rm_prompt_every_image_and_the_choice_constraint(rm: ScriptedRM) -> None:
    red = Image.new("RGB", (8, 6), "red")
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "blue").save(buffer, format="JPEG")
    sample = ThinkingSample(
        "What colour?", "<think>red</think><answer>red</answer>", [red, buffer.getvalue()]
    )
    with make_client(rm.url) as client:
        [result] = score(client, [sample])
    assert result.score == 0.7
    body = rm.requests[0]
    assert body["model"] == MODEL and body["temperature"] == 0
    assert body["structured_outputs"] == {"choice": list(SCORE_CHOICES)} and len(SCORE_CHOICES) == 11
    system, user = body["messages"]
    assert system == {"role": "system", "content": RM_SYSTEM_PROMPT}
    text, *images = user["content"]
    assert text == {"type": "text", "text": rm_user_text(sample.prompt_text, sample.response)}
    assert len(images) == 2
    decoded = []
    for part in images:
        prefix, payload = part["image_url"]["url"].split(",", 1)
        assert prefix == "data:image/png;base64"
        decoded.append(Image.open(io.BytesIO(base64.b64decode(payload))))
    assert [im.format for im in decoded] == ["PNG", "PNG"]
    assert decoded[0].size == (8, 6) and decoded[1].size == (4, 4)


def test_unconstrained_requests_carry_no_choice_list(rm: ScriptedRM) -> None:
    with make_client(rm.url, constrained=False) as client:
        score(client, samples())
    assert "structured_outputs" not in rm.requests[0]


def test_an_unreadable_image_fails_only_its_own_sample(rm: ScriptedRM, tmp_path: Any) -> None:
    batch = [
        ThinkingSample("q", "r", [tmp_path / "missing.png"]),
        ThinkingSample("q", "r", [Image.new("RGB", (2, 2))]),
    ]
    with make_client(rm.url) as client:
        results = score(client, batch)
    assert [r.failure for r in results] == ["bad_image", None]


def test_concurrency_is_bounded_and_results_keep_input_order(rm: ScriptedRM) -> None:
    rm.delay = 0.3
    rm.script.extend(["echo"] * 12)
    with make_client(rm.url, concurrency=4) as client:
        results = score(client, samples(12))
    assert rm.max_in_flight == 4
    assert [r.score for r in results] == [i / 100 for i in range(12)]


def test_stats_report_calls_failures_retries_latency_and_reset(rm: ScriptedRM) -> None:
    rm.script.extend(["status:500", "reply:<answer>0.2</answer>", "reply:junk", "reply:<answer>1.7</answer>"])
    with make_client(rm.url, concurrency=1) as client:
        score(client, samples(3))
        stats = client.stats(reset=True)
        after = client.stats()
    assert stats["rm/calls"] == 3 and stats["rm/failures"] == 2 and stats["rm/retries"] == 1
    assert stats["rm/failures/unparseable"] == 1 and stats["rm/failures/out_of_range"] == 1
    assert 0 < stats["rm/latency_p50"] <= stats["rm/latency_p95"]
    assert after == {"rm/calls": 0.0, "rm/failures": 0.0, "rm/retries": 0.0}


def test_stats_keys_are_registered_metrics(rm: ScriptedRM) -> None:
    from sophiavl_cli.metrics.registry import metric

    rm.script.extend(["reply:junk"])
    with make_client(rm.url) as client:
        score(client, samples(2))
        keys = list(client.stats())
    assert "rm/failures/unparseable" in keys and "rm/latency_p95" in keys
    for key in keys:
        metric(key)  # raises KeyError for a name the registry does not define


def test_closing_the_client_cancels_calls_in_flight_promptly(rm: ScriptedRM) -> None:
    rm.script.extend(["hang:5"])
    client = make_client(rm.url, timeout=30)
    future = client.submit(samples())
    time.sleep(0.3)
    client.close()
    assert future.cancelled()  # a close that waited out the 5 s hang would leave a scored result


def test_score_many_also_runs_on_the_callers_event_loop(rm: ScriptedRM) -> None:
    client = make_client(rm.url)

    async def run() -> list[Any]:
        try:
            return await client.score_many(samples(2))
        finally:
            await client.aclose()

    results = asyncio.run(run())
    assert [r.score for r in results] == [0.7, 0.7]


# --------------------------------------------------------------------------- config, urls, parsing


def test_from_config_reads_url_model_and_key_from_the_environment(rm: ScriptedRM) -> None:
    env = {"OPENAI_API_URL": rm.url + "/chat/completions", "REWARD_MODEL": MODEL, "RM_KEY": SECRET}
    client = ThinkingRewardClient.from_config(ThinkingRewardConfig(api_key_env="RM_KEY", concurrency=3), env)
    with client:
        assert client.base_url == rm.url and client.concurrency == 3
        assert client.health_check() == [MODEL]
    assert rm.auth_headers[-1] == f"Bearer {SECRET}"


def test_from_config_without_any_endpoint_says_how_to_set_one() -> None:
    with pytest.raises(UserError, match=r"reward\.thinking\.url or OPENAI_API_URL"):
        ThinkingRewardClient.from_config(ThinkingRewardConfig(), {})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:8000/v1/chat/completions", "http://localhost:8000/v1"),
        ("http://localhost:8000/v1/", "http://localhost:8000/v1"),
        ("http://localhost:8000", "http://localhost:8000/v1"),
        ("https://rm.example.org/api/v1/chat/completions/", "https://rm.example.org/api/v1"),
    ],
)
def test_base_and_full_completion_urls_normalise_to_the_base(given: str, expected: str) -> None:
    assert normalize_base_url(given) == expected


def test_a_url_without_scheme_is_rejected_naming_the_source() -> None:
    with pytest.raises(UserError, match="OPENAI_API_URL"):
        normalize_base_url("localhost:8000", source="OPENAI_API_URL")


@pytest.mark.parametrize(
    ("reply", "value", "failure"),
    [
        ("<answer>0.75</answer>", 0.75, None),
        ("<answer> 1.0 </answer>", 1.0, None),
        ("<answer>0</answer>", 0.0, None),
        ("\\boxed{0.7}", 0.7, None),
        ("0.3", 0.3, None),
        (" .5\n", 0.5, None),
        ("<answer>0.8", 0.8, None),
        ("<answer>1.7</answer>", None, "out_of_range"),
        ("-0.2", None, "out_of_range"),
        ("<answer>good</answer>", None, "unparseable"),
        ("The score is 0.7 because", None, "unparseable"),
        ("", None, "unparseable"),
        # a Qwen3 / Qwen3.5 reward model thinks in its own block first: its verdict follows it
        (
            "<think>\nStep 2 is wrong, so not <answer>1.0</answer>.\n</think>\n\n<answer>0.3</answer>",
            0.3,
            None,
        ),
        ("<think>\nlooks right\n</think>\n\n0.9", 0.9, None),
        ("<think>\nstill thinking, <answer>0.5</answer> maybe", 0.5, None),  # cut before </think>
        ("<think>\nall steps hold\n</think>\n\nfine", None, "unparseable"),
    ],
)
def test_score_parsing_reads_any_decimal_in_range_and_never_invents_zero(
    reply: str, value: float | None, failure: str | None
) -> None:
    parsed = parse_score(reply)
    assert (parsed.score, parsed.failure) == (value, failure)


# --------------------------------------------------------------------------- failure policy


def test_failure_monitor_stops_after_patience_consecutive_bad_steps() -> None:
    monitor = FailureMonitor(max_failure_fraction=0.5, patience=3)
    monitor.update(10, 6)
    monitor.update(10, 10)
    with pytest.raises(
        RewardModelDown, match=r"10/10 calls \(mostly timeout: 9, http_5xx: 1\).*3 consecutive"
    ):
        monitor.update(10, 10, {"timeout": 9, "http_5xx": 1})


def test_failure_monitor_resets_on_a_good_step_and_ignores_steps_without_calls() -> None:
    monitor = FailureMonitor(max_failure_fraction=0.5, patience=2)
    monitor.update(10, 9)
    monitor.update(10, 5)  # exactly the limit is not above it
    monitor.update(10, 9)
    monitor.update(0, 0)
    with pytest.raises(RewardModelDown):
        monitor.update(4, 3)


def test_failure_monitor_takes_its_defaults_from_the_recipe() -> None:
    monitor = FailureMonitor.from_config(ThinkingRewardConfig(max_failure_fraction=0.25, failure_patience=5))
    assert (monitor.max_failure_fraction, monitor.patience) == (0.25, 5)
