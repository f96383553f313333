"""`sophiavl infer` on the built-in tiny model: single and batch, resume, --json, prompts, backends.

The tiny model is random, so its answers are noise; what is checked is the plumbing: the exact
prompt each question type gets, batched greedy == one-by-one greedy (left padding done right),
a rerun that answers only what an interrupted run left, the --json schema, and the vLLM backend
(one engine start for this file) giving the hf backend's greedy tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from sophiavl_cli.data.prompts import SYSTEM_PROMPT, TYPE_SUFFIX
from sophiavl_cli.errors import UserError
from sophiavl_cli.infer.batch import answered_keys, read_requests, run_batch
from sophiavl_cli.infer.inferencer import GenerationSettings, Inferencer, InferRequest, InferResult

ROOT = Path(__file__).resolve().parents[1]
TINY = "builtin:tiny-qwen2.5-vl"
SMALL_IMAGES = ["--min-pixels", "3136", "--max-pixels", "50176"]  # a few image tokens: fast on CPU
GREEDY = GenerationSettings(max_new_tokens=12)


def sophiavl(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def shapes_png(path: Path, *, size: tuple[int, int] = (150, 100), color: str = "red") -> Path:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill=color)
    draw.rectangle((80, 30, 140, 90), fill="blue")
    image.save(path)
    return path


def write_requests(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    return {
        "wide": shapes_png(folder / "wide.png"),
        "tall": shapes_png(folder / "tall.png", size=(70, 130), color="green"),
        "small": shapes_png(folder / "small.png", size=(60, 60), color="orange"),
    }


@pytest.fixture(scope="module")
def hf_inferencer(tiny_model_dir: Path) -> Inferencer:
    import torch

    torch.set_num_threads(1)
    return Inferencer(TINY, backend="hf", min_pixels=3136, max_pixels=50176, batch_size=4)


def mixed_requests(images: dict[str, Path]) -> list[InferRequest]:
    """Different lengths and image counts (0, 1, 2), so left padding and pixel order both matter."""
    return [
        InferRequest.create(
            prompt="How many shapes?", problem_type="numerical", images=[str(images["wide"])]
        ),
        InferRequest.create(prompt="Read the word.", problem_type="OCR", images=[str(images["tall"])]),
        InferRequest.create(prompt="What is 2 + 3? Answer briefly.", problem_type="text"),
        InferRequest.create(
            prompt="Which image has more shapes?",
            problem_type="multiple_choice",
            images=[str(images["small"]), str(images["wide"])],
            options="A. first;B. second",
        ),
    ]


# --------------------------------------------------------------------------- prompts


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("numerical", "numerical"),
        ("multiple choice", "multiple choice"),
        ("multiple_choice", "multiple choice"),
        ("free-form", "free-form"),
        ("free_form", "free-form"),
        ("OCR", "OCR"),
        ("text", "text"),
    ],
)
def test_every_question_type_sends_its_released_suffix_to_the_model(
    hf_inferencer: Inferencer, images: dict[str, Path], spelling: str, canonical: str
) -> None:
    options = "A. 3;B. 5" if canonical == "multiple choice" else None
    request = InferRequest.create(
        prompt="How many circles?", problem_type=spelling, images=[str(images["wide"])], options=options
    )
    assert request.problem_type == canonical
    text = hf_inferencer.prompt_text(request)
    encoded = hf_inferencer.processor.encode(text, hf_inferencer.images(request))
    seen_by_model = hf_inferencer.processor.decode(encoded.input_ids, skip_special_tokens=False)
    assert TYPE_SUFFIX[canonical] in seen_by_model
    assert SYSTEM_PROMPT in seen_by_model
    others = [suffix for kind, suffix in TYPE_SUFFIX.items() if kind != canonical]
    assert not any(suffix in seen_by_model for suffix in others)
    assert encoded.num_image_tokens > 0 and seen_by_model.count("<|image_pad|>") == encoded.num_image_tokens
    if options:
        assert "How many circles?\nA. 3; B. 5\n" in seen_by_model


def test_preset_none_sends_the_bare_question(tiny_model_dir: Path) -> None:
    inferencer = Inferencer(TINY, preset="none", min_pixels=3136, max_pixels=50176)
    text = inferencer.prompt_text(InferRequest.create(prompt="How many circles?", problem_type="numerical"))
    assert "How many circles?" in text
    assert SYSTEM_PROMPT not in text and TYPE_SUFFIX["numerical"] not in text
    choice = InferRequest.create(prompt="Which?", problem_type="multiple choice", options="A. 1;B. 2")
    assert "Which?\nA. 1; B. 2" in inferencer.prompt_text(choice)  # options are not dropped


def test_bad_questions_are_refused_in_one_line_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a URL; sophiavl infer works offline"):
        InferRequest.create(prompt="q", problem_type="OCR", images=["https://example.com/a.png"])
    with pytest.raises(UserError, match="type 'essay' is unknown"):
        InferRequest.create(prompt="q", problem_type="essay")
    with pytest.raises(UserError, match="options are only used with type 'multiple choice'"):
        InferRequest.create(prompt="q", problem_type="numerical", options="A. 1;B. 2")
    with pytest.raises(UserError, match=r"missing\.png does not exist"):
        InferRequest.create(prompt="q", problem_type="OCR", images=[str(tmp_path / "missing.png")])


def test_a_bad_batch_row_is_named_by_file_line_and_field(tmp_path: Path, images: dict[str, Path]) -> None:
    good = {"images": [str(images["wide"])], "prompt": "q", "type": "numerical"}
    path = write_requests(tmp_path / "r.jsonl", [good, {**good, "prompt": "q2", "typ": "OCR"}])
    with pytest.raises(UserError, match=r"r.jsonl line 2: unknown field\(s\) typ"):
        read_requests(path)
    path = write_requests(tmp_path / "r.jsonl", [{**good, "id": "a"}, {**good, "id": "a"}])
    with pytest.raises(UserError, match="line 2: id 'a' repeats line 1"):
        read_requests(path)
    path = write_requests(tmp_path / "r.jsonl", [{"images": "missing.png", "prompt": "q", "type": "OCR"}])
    with pytest.raises(UserError, match=r"line 1: image missing\.png does not exist"):
        read_requests(path)


# --------------------------------------------------------------------------- parsing and rendering


def test_a_response_is_split_into_reasoning_and_the_extracted_answer() -> None:
    request = InferRequest.create(prompt="q", problem_type="numerical")
    result = InferResult(
        request, "<think>two plus two</think> so: <answer> $4$ </answer>", 9, 20, 0, "stop", 0.1
    )
    assert result.reasoning == "two plus two"
    assert result.answer_text == "so: <answer> $4$ </answer>"
    assert result.answer == "$4$" and result.format_ok
    cut = InferResult(request, "<think>still thinking", 3, 20, 0, "length", 0.1)
    assert cut.reasoning == "still thinking" and cut.answer is None and not cut.format_ok
    plain = InferResult(request, "4", 1, 20, 0, "stop", 0.1)
    assert plain.reasoning is None and plain.answer_text == "4" and plain.answer is None


def test_reasoning_and_answer_are_rendered_in_separate_panels_with_the_extracted_answer() -> None:
    from sophiavl_cli.cli.infer import render_result
    from sophiavl_cli.console import console

    request = InferRequest.create(prompt="q", problem_type="numerical")
    result = InferResult(request, "<think>count: 1, 2, 3</think><answer>3</answer>", 12, 40, 16, "stop", 0.5)
    with console.capture() as captured:
        render_result(result, TINY, "hf", {"load_s": 1.0, "generate_s": 0.5, "tokens_per_s": 24.0})
    text = captured.get()
    reasoning_at, answer_at = text.index("reasoning"), text.index("─ answer ─")
    assert reasoning_at < text.index("count: 1, 2, 3") < answer_at < text.index("<answer>3</answer>")
    assert "extracted answer: 3" in text
    flat = " ".join(text.split())
    assert "prompt 40 tokens (16 image)" in flat and "generated 12 tokens in 0.50 s (24.0 tok/s)" in flat


# --------------------------------------------------------------------------- hf backend


def test_batched_greedy_equals_one_by_one_greedy(hf_inferencer: Inferencer, images: dict[str, Path]) -> None:
    requests = mixed_requests(images)
    batched = hf_inferencer.generate(requests, GREEDY)  # batch_size 4: one left-padded batch
    one_by_one = [hf_inferencer.generate([r], GREEDY)[0] for r in requests]
    assert len({r.prompt_tokens for r in batched}) == len(requests)  # really different lengths
    for together, alone in zip(batched, one_by_one, strict=True):
        assert together.response == alone.response
        assert (together.prompt_tokens, together.image_tokens) == (alone.prompt_tokens, alone.image_tokens)
        assert together.completion_tokens == alone.completion_tokens > 0


def test_single_question_prints_the_answer_panel_and_token_counts(images: dict[str, Path]) -> None:
    result = sophiavl(
        "infer", "--model", TINY, "--image", str(images["wide"]), "--type", "numerical",
        "--prompt", "How many shapes?", "--max-new-tokens", "6", *SMALL_IMAGES,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "answer" in result.stdout and "╭" in result.stdout  # a rich panel
    assert "no <answer>...</answer> in the response" in result.stdout  # a random model never closes tags
    assert "generated 6 tokens" in result.stdout and "image)" in result.stdout


def test_json_prints_one_object_with_the_documented_schema(images: dict[str, Path]) -> None:
    result = sophiavl(
        "infer", "--model", TINY, "--image", str(images["wide"]), "--image", str(images["small"]),
        "--type", "multiple_choice", "--prompt", "Which?", "--options", "A. 1;B. 2",
        "--max-new-tokens", "5", "--json", *SMALL_IMAGES,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == {
        "model", "model_path", "backend", "preset", "id", "problem_type", "prompt", "options", "images",
        "response", "reasoning", "answer", "format_ok", "finish_reason", "tokens", "seconds", "timing",
    }  # fmt: skip
    assert out["model"] == TINY and out["backend"] == "hf" and out["preset"] == "sophiavl-r1"
    assert out["problem_type"] == "multiple choice" and out["options"] == ["A. 1", "B. 2"]
    assert out["images"] == [str(images["wide"]), str(images["small"])]
    assert isinstance(out["response"], str) and out["finish_reason"] == "length"
    assert out["tokens"]["completion"] == 5 and out["tokens"]["prompt"] > out["tokens"]["image"] > 0
    assert set(out["timing"]) == {"load_s", "generate_s", "tokens_per_s"}
    assert out["answer"] is None and out["format_ok"] is False


def test_without_model_an_empty_hf_cache_says_to_run_sophiavl_download(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    empty = tmp_path / "hf"
    result = sophiavl(
        "infer", "--image", str(images["wide"]), "--type", "numerical", "--prompt", "q",
        env={"HF_HOME": str(empty), "HF_HUB_CACHE": str(empty / "hub")},
    )  # fmt: skip
    assert result.returncode == 2
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "SophiaVL-R1-7B" in err and "`sophiavl download`" in err


@pytest.mark.slow
def test_a_batch_run_resumes_after_an_interruption_and_answers_only_what_is_left(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    rows = [
        {"id": "q1", "images": [str(images["wide"])], "prompt": "How many shapes?", "type": "numerical"},
        {"images": str(images["tall"]), "prompt": "Read it.", "type": "OCR"},  # no id: keyed by line
        {"id": 7, "prompt": "Capital of France?", "type": "text"},
        {"id": "q4", "images": ["small.png"], "prompt": "Pick.", "type": "multiple choice", "options": ["A. x", "B. y"]},
    ]  # fmt: skip
    shapes_png(tmp_path / "small.png", size=(60, 60), color="orange")  # relative to the request file
    requests = write_requests(tmp_path / "requests.jsonl", rows)
    answers = tmp_path / "answers.jsonl"
    args = ["infer", "--model", TINY, "--input", str(requests), "--output", str(answers), "--max-new-tokens", "4",
            "--batch-size", "2", *SMALL_IMAGES]  # fmt: skip

    first = sophiavl(*args)
    assert first.returncode == 0, first.stderr
    complete = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [a["key"] for a in complete] == ["id:q1", "line:2", "id:7", "id:q4"]
    assert "4 answered" in first.stdout

    # An interrupted run: two answers written, the third cut mid-line by the kill.
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    second = sophiavl(*args, "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert (summary["rows"], summary["skipped"], summary["answered"]) == (4, 2, 2)
    resumed = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [a["key"] for a in resumed] == ["id:q1", "line:2", "id:7", "id:q4"]
    assert [a["response"] for a in resumed] == [a["response"] for a in complete]  # greedy: same answers

    third = sophiavl(*args, "--json")
    assert json.loads(third.stdout)["answered"] == 0
    assert answered_keys(answers) == {"id:q1", "line:2", "id:7", "id:q4"}


# --------------------------------------------------------------------------- vLLM backend


@pytest.fixture(scope="module")
def vllm_inferencer(tiny_model_dir: Path) -> Iterator[Inferencer]:
    pytest.importorskip("vllm")
    inferencer = Inferencer(TINY, backend="vllm", min_pixels=3136, max_pixels=50176)
    yield inferencer
    inferencer.close()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_backend_answers_a_batch_file_in_one_generate_call_with_the_hf_greedy_tokens(
    vllm_inferencer: Inferencer, hf_inferencer: Inferencer, images: dict[str, Path], tmp_path: Path
) -> None:
    rows = [
        {"id": f"r{i}", "images": [str(p) for p in r.images], "prompt": r.prompt, "type": r.problem_type,
         **({"options": list(r.options)} if r.options else {})}
        for i, r in enumerate(mixed_requests(images))
    ]  # fmt: skip
    requests = write_requests(tmp_path / "requests.jsonl", rows)
    answers = tmp_path / "answers.jsonl"
    llm = vllm_inferencer.backend.generator.start(2)  # type: ignore[attr-defined]  # the one engine start of this file
    calls: list[int] = []
    real_generate = llm.generate

    def counting_generate(prompts: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(prompts))
        return real_generate(prompts, *args, **kwargs)

    llm.generate = counting_generate
    try:
        summary = run_batch(vllm_inferencer, requests, answers, GREEDY)
    finally:
        llm.generate = real_generate
    assert calls == [4] and summary.answered == 4
    from_vllm = [json.loads(line) for line in answers.read_text().splitlines()]
    from_hf = hf_inferencer.generate(mixed_requests(images), GREEDY)
    for v, h in zip(from_vllm, from_hf, strict=True):
        assert v["response"] == h.response
        assert v["tokens"] == {
            "prompt": h.prompt_tokens,
            "image": h.image_tokens,
            "completion": h.completion_tokens,
        }
