"""`sophiavl eval` end to end: the built-in tiny model on fixtures (hf backend), resume, the judge.

The tiny model has random weights, so its answers are noise: these tests check files, structure,
resume and the judge protocol, never accuracy. The judge is a real OpenAI-compatible HTTP server
on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eval_fixtures import RIGHT, write_jsonl, write_tsv

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import get_benchmark
from sophiavl_cli.eval.cache import read_cache
from sophiavl_cli.eval.judge import JudgeSettings
from sophiavl_cli.eval.runner import run_eval, score_predictions
from sophiavl_cli.eval.settings import EvalSettings

ROOT = Path(__file__).resolve().parents[1]
TINY = "builtin:tiny-qwen2.5-vl"
SMALL_IMAGES = {"min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28}


def _settings(tmp_path: Path, benches: tuple[str, ...], **overrides: Any) -> EvalSettings:
    data = tmp_path / "data"
    for name in benches:
        write_tsv(name, data)
    values: dict[str, Any] = {
        "model": TINY,
        "benchmarks": tuple(get_benchmark(b) for b in benches),
        "output_dir": tmp_path / "out",
        "data": data,
        "max_new_tokens": 4,
        **SMALL_IMAGES,
    }
    values.update(overrides)
    return EvalSettings(**values)


# ---------------------------------------------------------------------- loopback judge


class _JudgeServer(ThreadingHTTPServer):
    reply = "14"
    delay_s = 0.0
    fail_first = False
    status = 200
    api_key_seen = ""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _JudgeHandler)
        self.lock = threading.Lock()
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        self.prompts: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _JudgeHandler(BaseHTTPRequestHandler):
    server: _JudgeServer

    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests += 1
            number = server.requests
            server.inflight += 1
            server.max_inflight = max(server.max_inflight, server.inflight)
            server.api_key_seen = self.headers.get("Authorization", "")
            server.prompts.append(body["messages"][0]["content"])
        time.sleep(server.delay_s)
        if server.fail_first and number == 1:
            status, payload = 500, {"error": "busy"}
        elif server.status != 200:
            status, payload = server.status, {"error": {"message": "no such model"}}
        else:
            status = 200
            payload = {"choices": [{"message": {"role": "assistant", "content": server.reply}}]}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with server.lock:
            server.inflight -= 1

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture()
def judge_server() -> Iterator[_JudgeServer]:
    server = _JudgeServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------- tests


def test_tiny_model_eval_writes_predictions_scores_and_csv_for_each_benchmark(tmp_path: Path) -> None:
    results = run_eval(_settings(tmp_path, ("MMStar", "OCRBench")))
    assert [r.score.benchmark for r in results] == ["MMStar", "OCRBench"]
    for result, n in zip(results, (2, 2), strict=True):
        folder = tmp_path / "out" / result.score.benchmark
        lines = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(lines) == n and {line["benchmark"] for line in lines} == {result.score.benchmark}
        assert all(line["settings"]["max_new_tokens"] == 4 and line["prompt"] == "default" for line in lines)
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["num_scored"] == n and scores["scoring"] == "official rules"
        assert (folder / "scores.csv").read_text().startswith("benchmark,group,key,n,score,unit,scoring\n")
    assert results[1].score.unit == "points" and "Text Recognition" in results[1].score.extra


def test_an_interrupted_run_resumes_and_generates_only_the_missing_answers(tmp_path: Path) -> None:
    settings = _settings(tmp_path, ("MME",), prompt="sophiavl-r1")
    calls: list[int] = []

    def stop_after_two(name: str, done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval(settings, progress=stop_after_two)
    cache = tmp_path / "out" / "MME" / "predictions.jsonl"
    first = read_cache(cache)
    assert len(first) == 2
    with cache.open("a") as handle:  # a line cut in the middle of a write
        handle.write('{"key": "abc", "predic')

    resumed: list[int] = []
    results = run_eval(settings, progress=lambda name, done, total: resumed.append(done))
    assert resumed == [3, 4]  # two answers came from the cache, two were generated
    final = read_cache(cache)
    assert len(final) == 4 and all(final[k] == v for k, v in first.items())
    assert results[0].score.num_items == 4

    changed = _settings(tmp_path, ("MME",), prompt="sophiavl-r1", max_new_tokens=3)
    regenerated: list[int] = []
    run_eval(changed, progress=lambda name, done, total: regenerated.append(done))
    assert regenerated == [1, 2, 3, 4]  # new generation settings -> new keys, nothing stale reused


def test_judge_extracts_answers_the_rules_cannot_read_with_retries_cache_and_bounded_concurrency(
    tmp_path: Path, judge_server: _JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-loopback-secret"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    judge_server.fail_first = True
    judge_server.delay_s = 0.05
    data = write_tsv("MathVista", tmp_path / "data")
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [{"index": i, "prediction": "<answer>fourteen</answer>"} for i in ("1", "2", "3")],
    )
    settings = JudgeSettings(model="loopback-judge", base_url=judge_server.url, concurrency=2)
    result = score_predictions(
        get_benchmark("MathVista"), preds, data=data, judge=settings, output_dir=tmp_path / "o"
    )
    assert result.scoring == "judge:loopback-judge"
    assert result.score.score == pytest.approx(100 / 3)  # the judge says 14: right only for item 2
    assert result.methods == {"judge": 3}
    assert judge_server.requests == 4  # one 500 retried, then one request per item
    assert judge_server.max_inflight <= 2
    assert judge_server.api_key_seen == f"Bearer {secret}"
    assert "Model response: fourteen" in judge_server.prompts[-1]
    cache_file = tmp_path / "o" / "MathVista" / "judge_cache.jsonl"
    assert len(cache_file.read_text().splitlines()) == 3
    for saved in (tmp_path / "o" / "MathVista").iterdir():
        assert secret not in saved.read_text()

    again = score_predictions(
        get_benchmark("MathVista"), preds, data=data, judge=settings, output_dir=tmp_path / "o"
    )
    assert judge_server.requests == 4 and again.score.score == result.score.score  # all from the cache


def test_a_judge_refusing_the_request_is_one_line_without_the_key(
    tmp_path: Path, judge_server: _JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-loopback-secret"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    judge_server.status = 404
    data = write_tsv("MathVista", tmp_path / "data")
    preds = write_jsonl(tmp_path / "p.jsonl", [{"index": "2", "prediction": "no idea"}])
    settings = JudgeSettings(model="missing-model", base_url=judge_server.url)
    with pytest.raises(UserError) as refused:
        score_predictions(
            get_benchmark("MathVista"),
            preds,
            data=data,
            judge=settings,
            output_dir=tmp_path,
            allow_partial=True,
        )
    assert "HTTP 404" in str(refused.value) and secret not in str(refused.value)
    assert judge_server.requests == 1  # a 404 is not retried


def test_rule_prefetch_skips_the_judge(tmp_path: Path, judge_server: _JudgeServer) -> None:
    data = write_tsv("MathVista", tmp_path / "data")
    # VLMEvalKit's prefetch settles a number only when float() of the answer equals the gold value
    right = {**RIGHT["MathVista"], "3": "<answer>1.45</answer>"}
    preds = write_jsonl(tmp_path / "p.jsonl", [{"index": i, "prediction": r} for i, r in right.items()])
    settings = JudgeSettings(model="j", base_url=judge_server.url)
    result = score_predictions(
        get_benchmark("MathVista"), preds, data=data, judge=settings, output_dir=tmp_path
    )
    assert result.score.score == 100.0 and judge_server.requests == 0


def test_tiny_model_eval_with_a_judge_labels_the_judged_benchmark(
    tmp_path: Path, judge_server: _JudgeServer
) -> None:
    judge = JudgeSettings(model="loopback-judge", base_url=judge_server.url)
    results = run_eval(_settings(tmp_path, ("MathVista", "ChartQA"), judge=judge))
    assert [r.scoring for r in results] == ["judge:loopback-judge", "official rules"]
    cache = tmp_path / "out" / "MathVista" / "judge_cache.jsonl"
    assert judge_server.requests == (len(cache.read_text().splitlines()) if cache.exists() else 0)


def test_cli_scores_predictions_as_json_and_bad_input_is_one_line_with_exit_code_2(tmp_path: Path) -> None:
    data = write_tsv("ChartQA", tmp_path / "data")
    preds = write_jsonl(
        tmp_path / "p.jsonl", [{"index": i, "prediction": r} for i, r in RIGHT["ChartQA"].items()]
    )
    env = {**os.environ, "COLUMNS": "200"}
    base = [sys.executable, "-m", "sophiavl_cli", "eval"]
    ok = subprocess.run(
        [
            *base,
            "--bench",
            "chartqa_test",
            "--predictions",
            str(preds),
            "--data",
            str(data),
            "--json",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)["results"][0]
    assert (
        payload["benchmark"] == "ChartQA"
        and payload["score"] == 100.0
        and payload["paper"]["SophiaVL-R1-7B"] == 88.5
    )
    bad = subprocess.run(
        [*base, "--bench", "ChartQAA", "--predictions", str(preds)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "did you mean ChartQA" in bad.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_backend_generates_a_benchmark_in_one_call_and_matches_hf_greedy(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    options = {"max_model_len": 1024, "max_num_seqs": 4, "kv_cache_memory_bytes": 32 * 2**20}
    vllm_run = run_eval(_settings(tmp_path, ("MMStar",), backend="vllm", vllm_options=options))
    hf_run = run_eval(_settings(tmp_path, ("MMStar",), output_dir=tmp_path / "hf"))
    vllm_preds = read_cache(tmp_path / "out" / "MMStar" / "predictions.jsonl")
    hf_preds = read_cache(tmp_path / "hf" / "MMStar" / "predictions.jsonl")
    assert vllm_run[0].score.num_items == hf_run[0].score.num_items == 2
    assert vllm_preds.keys() == hf_preds.keys()  # the backend is not part of the cache key
    assert {k: v["prediction"] for k, v in vllm_preds.items()} == {
        k: v["prediction"] for k, v in hf_preds.items()
    }
