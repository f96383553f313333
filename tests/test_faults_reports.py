"""Reports that tell the truth: nothing scored is a failure, and an undefined statistic is `null` in
JSON (never a bare `NaN`, which JSON readers reject) and `n/a` on screen.

The reward model here is a real HTTP server on a loopback port that answers every call with text
the score parser cannot read.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sophiavl_cli.cli.app import main
from sophiavl_cli.console import print_json, stat
from sophiavl_cli.fileio import JsonlAppender, atomic_write_json, json_text, read_jsonl

SERVED = "thinking-reward-model"


def _strict_loads(text: str) -> Any:
    """json.loads that refuses NaN / Infinity, as JavaScript, jq and Go readers do."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


class _GarbageRM(ThreadingHTTPServer):
    """An OpenAI-style endpoint that lists the model and answers every chat call with no score."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GarbageHandler)
        self.calls = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _GarbageHandler(BaseHTTPRequestHandler):
    server: _GarbageRM

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
        self._send({"object": "list", "data": [{"id": SERVED, "object": "model", "owned_by": "test"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls += 1
        message = {"role": "assistant", "content": "I would rather not say."}
        self._send({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]})


@pytest.fixture
def garbage_rm() -> Iterator[_GarbageRM]:
    server = _GarbageRM()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_eval_rm_with_nothing_scored_exits_1_and_writes_null_not_nan(garbage_rm, tmp_path, capsys):
    out = tmp_path / "report"
    try:
        main(
            [
                "eval-rm",
                garbage_rm.url,
                "--data",
                "builtin:thinking-demo@val",
                "--limit",
                "6",
                "--served-name",
                SERVED,
                "-o",
                str(out),
            ]
        )
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert garbage_rm.calls >= 6
    assert code == 1, text
    report = _strict_loads((out / "report.json").read_text(encoding="utf-8"))  # valid JSON for any reader
    assert (report["rows"], report["scored"], report["failures"]) == (6, 0, 6)
    assert report["mae"] is None and report["within"] is None and report["spearman"] is None


def test_eval_rm_nothing_scored_says_so_on_screen(garbage_rm, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["eval-rm", garbage_rm.url, "--data", "builtin:thinking-demo@val", "--limit", "3",
              "--served-name", SERVED, "-o", str(tmp_path / "r")])  # fmt: skip
    captured = capsys.readouterr()
    screen = " ".join((captured.out + captured.err).split())
    assert stopped.value.code == 1
    assert "n/a" in screen and "nan" not in screen.lower().replace("n/a", "")
    assert "no row was scored (3 of 3 calls failed: unparseable: 3)" in screen


def test_every_json_writer_turns_undefined_numbers_into_null(tmp_path, capsys):
    record = {"mae": float("nan"), "nested": [1.0, float("inf"), {"x": -math.inf}], "ok": 0.5}
    expected = {"mae": None, "nested": [1.0, None, {"x": None}], "ok": 0.5}
    atomic_write_json(tmp_path / "a.json", record)
    assert _strict_loads((tmp_path / "a.json").read_text()) == expected
    with JsonlAppender(tmp_path / "b.jsonl") as out:
        out.write(record)
    assert read_jsonl(tmp_path / "b.jsonl") == [expected]
    assert _strict_loads((tmp_path / "b.jsonl").read_text()) == expected
    print_json(record)
    assert _strict_loads(capsys.readouterr().out) == expected
    assert _strict_loads(json_text(record, indent=1)) == expected


def test_an_undefined_statistic_reads_n_a_on_screen():
    assert [stat(None), stat(float("nan")), stat(0.25, ".3f")] == ["n/a", "n/a", "0.250"]
