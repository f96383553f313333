"""Inference with a SophiaVL-R1-style model: one question, or a batch file (see `batch.py`).

What the released inference script did, kept: the training prompt (system prompt, thinking
instruction, per-type suffix; `--preset none` sends the bare question), greedy decoding by default,
2,048 new tokens. What it adds: the response split into reasoning (`<think>`) and answer, the
answer extracted exactly as the outcome reward extracts it (`rewards.format.extract_answer`),
token counts and timing, images resized to the training pixel bounds (recipe `data.min_pixels` /
`data.max_pixels`, not the model folder's processor defaults, so the model sees images as it did
in RL), and two backends behind one call (`backends.py`, which also holds `GenerationSettings`): transformers in left-padded
batches, or vLLM with the whole batch in one `generate`.

Usage:
    sophiavl infer --image chart.png --type numerical --prompt "What is the peak value?"
    sophiavl infer --model builtin:tiny-qwen2.5-vl --image x.png --type "multiple choice" \
        --prompt "Which shape is largest?" --options "A. circle;B. square" --json
    sophiavl infer --input requests.jsonl --output answers.jsonl --backend vllm
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from sophiavl_cli.config.recipe import DataConfig
from sophiavl_cli.data.images import load_image, open_image
from sophiavl_cli.data.problem_types import PROBLEM_TYPES, normalize_problem_type
from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import DEFAULT_MODEL
from sophiavl_cli.infer.backends import GenerationSettings, build_backend

BACKENDS = ("hf", "vllm")
PRESETS = ("sophiavl-r1", "none")
DEFAULT_MIN_PIXELS: int = DataConfig.model_fields["min_pixels"].default
DEFAULT_MAX_PIXELS: int = DataConfig.model_fields["max_pixels"].default
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

Backend = Literal["hf", "vllm"]


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class InferRequest:
    """One question. `images` are absolute paths; `problem_type` is canonical (`multiple choice`)."""

    prompt: str
    problem_type: str
    images: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    id: str | None = None
    where: str = field(default="", compare=False)  # `requests.jsonl line 3`: named by decode errors

    @classmethod
    def create(
        cls,
        *,
        prompt: str,
        problem_type: str,
        images: Sequence[str] = (),
        options: str | Sequence[str] | None = None,
        id: str | None = None,
        base: Path | None = None,
        where: str = "",
    ) -> InferRequest:
        """Validate and normalise; `where` (e.g. `requests.jsonl line 3`) prefixes every error."""
        at = f"{where}: " if where else ""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{at}prompt is empty; give the question text")
        kind = normalize_problem_type(problem_type)
        if kind not in PROBLEM_TYPES:
            raise UserError(f"{at}type {problem_type!r} is unknown; use one of {', '.join(PROBLEM_TYPES)}")
        opts = parse_options(options, where)
        if opts and kind != "multiple choice":
            raise UserError(
                f"{at}options are only used with type 'multiple choice' (type is {kind!r}); drop them"
            )
        paths = tuple(resolve_image_path(image, base, where) for image in images)
        for path in paths:  # the header only, before any model loads: not an image, a decompression bomb
            open_image(path, where=where).close()
        return cls(prompt=prompt, problem_type=kind, images=paths, options=opts, id=id, where=where)

    def row(self) -> dict[str, Any]:
        """The data-row view the prompt presets take (`data.prompts.build_messages`)."""
        prompt = self.prompt
        if self.options and not prompt[-1:].isspace():  # the released layout glues options on as is
            prompt += "\n"
        return {
            "prompt": prompt,
            "problem_type": self.problem_type,
            "options": list(self.options),
            "images": list(self.images),
        }


def parse_options(value: str | Sequence[str] | None, where: str = "") -> tuple[str, ...]:
    """`"A. 3;B. 5"` or `["A. 3", "B. 5"]` -> `("A. 3", "B. 5")`."""
    if value is None:
        return ()
    parts = value.split(";") if isinstance(value, str) else list(value)
    if not all(isinstance(p, str) for p in parts):
        at = f"{where}: " if where else ""
        raise UserError(f'{at}options must be a list of strings or one string "A. ..;B. .."')
    return tuple(p.strip() for p in parts if p.strip())


def resolve_image_path(image: str, base: Path | None = None, where: str = "") -> str:
    """An existing local image file as an absolute path; URLs and missing files are one-line errors.

    Relative paths are tried against `base` (a batch file's folder) first, then the working folder.
    """
    at = f"{where}: " if where else ""
    if not isinstance(image, str) or not image:
        raise UserError(f"{at}image must be a non-empty path string")
    if _URL.match(image):
        raise UserError(
            f"{at}image {image} is a URL; sophiavl infer works offline on local files: download it first "
            "(e.g. curl -o image.png URL) and pass the path"
        )
    path = Path(image).expanduser()
    candidates = [path] if path.is_absolute() else [*([base / path] if base else []), Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate.resolve())
    raise UserError(f"{at}image {image} does not exist; fix the path")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class InferResult:
    """One answered request."""

    request: InferRequest
    response: str
    completion_tokens: int
    prompt_tokens: int
    image_tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)
    seconds: float  # generation time; a batch's time is shared evenly among its rows

    @property
    def reasoning(self) -> str | None:
        """Text inside the first `<think>...</think>` (to the end when the closing tag never came)."""
        match = _THINK.search(self.response)
        return match.group(1).strip() if match else None

    @property
    def answer_text(self) -> str:
        """What follows `</think>` (the whole response when there is no reasoning block)."""
        head, sep, tail = self.response.partition("</think>")
        return tail.strip() if sep else ("" if "<think>" in head else head.strip())

    @property
    def answer(self) -> str | None:
        from sophiavl_cli.rewards.format import extract_answer

        # first: infer shows what the training reward would score (rewards/outcome.py)
        return extract_answer(self.response, which="first")

    @property
    def format_ok(self) -> bool:
        from sophiavl_cli.rewards.format import passes_format

        return passes_format(self.response)

    def to_json(self) -> dict[str, Any]:
        """The per-answer object of `--json` and of each `answers.jsonl` line (docs/inference.md)."""
        return {
            "id": self.request.id,
            "problem_type": self.request.problem_type,
            "prompt": self.request.prompt,
            "options": list(self.request.options),
            "images": list(self.request.images),
            "response": self.response,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "format_ok": self.format_ok,
            "finish_reason": self.finish_reason,
            "tokens": {
                "prompt": self.prompt_tokens,
                "image": self.image_tokens,
                "completion": self.completion_tokens,
            },
            "seconds": round(self.seconds, 4),
        }


# --------------------------------------------------------------------------- the inferencer


class Inferencer:
    """A model, its processor and a backend, loaded once and reused for every request."""

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: Backend = "hf",
        preset: str = "sophiavl-r1",
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        from sophiavl_cli.models.processing import VLProcessor

        if backend not in BACKENDS:
            raise UserError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
        if preset not in PRESETS:
            raise UserError(f"--preset {preset}: choose one of {', '.join(PRESETS)}")
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size}: must be at least 1")
        start = time.perf_counter()
        self.model_ref = model or DEFAULT_MODEL
        self.model_path = resolve_default_model() if self.model_ref == DEFAULT_MODEL else _resolve(model)
        self.preset = preset
        self.processor = VLProcessor.from_pretrained(
            self.model_path, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.backend = build_backend(
            backend, self.model_path, self.processor, batch_size=batch_size, device=device
        )
        self.load_seconds = time.perf_counter() - start

    def prompt_text(self, request: InferRequest) -> str:
        """The rendered chat prompt (one `<|image_pad|>` per image), exactly what is tokenized.

        The `none` preset sends the bare question, so options are folded into it here (the preset
        itself would drop them).
        """
        from sophiavl_cli.data.prompts import build_messages, question_with_options

        row = request.row()
        if self.preset == "none" and row["options"]:
            row = {**row, "prompt": question_with_options(row["prompt"], row["options"], row["problem_type"])}
        return self.processor.apply_chat_template(build_messages(row, preset=self.preset))

    def images(self, request: InferRequest) -> list[Image.Image]:
        return [load_image(path, where=request.where) for path in request.images]

    def generate(self, requests: Sequence[InferRequest], settings: GenerationSettings) -> list[InferResult]:
        """Answer `requests` in order; the backend decides how to batch them."""
        prompts = [(self.prompt_text(r), self.images(r)) for r in requests]
        outputs = self.backend.generate(prompts, settings)
        results = []
        for request, out in zip(requests, outputs, strict=True):
            results.append(
                InferResult(
                    request=request,
                    response=self.processor.decode(out.token_ids),
                    completion_tokens=len(out.token_ids),
                    prompt_tokens=out.prompt_tokens,
                    image_tokens=out.image_tokens,
                    finish_reason=out.finish_reason,
                    seconds=out.seconds,
                )
            )
        return results

    def close(self) -> None:
        """Free the backend (vLLM holds memory and threads until told otherwise)."""
        self.backend.close()


def resolve_default_model() -> Path:
    """SophiaVL-R1-7B from the local HF cache, or a one-line error saying how to get it."""
    try:
        return _resolve(DEFAULT_MODEL)
    except UserError as exc:
        raise UserError(
            "no --model given and SophiaVL-R1-7B (bunny127/SophiaVL-R1-7B) is not in the local HF cache; "
            "run `sophiavl download` first, or pass --model (a folder, alias or builtin:tiny-qwen2.5-vl)"
        ) from exc


def _resolve(model: str) -> Path:
    from sophiavl_cli.models.resolve import resolve_model

    return resolve_model(model)
