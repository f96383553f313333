"""Prompt presets: turn a data row into chat messages.

The `sophiavl-r1` preset sends the exact strings the released SophiaVL-R1 policy and its thinking
reward model were trained on, typos included ("tagsdd", no period after "expressions"): changing a
character changes what the released models see. `none` sends the raw question with no system
prompt. A user template (recipe `data.prompt_template`, a Jinja file or inline text) replaces the
preset's user text and is rendered in a sandbox with `question`, `options`, `problem_type`.

`<image>` in the user text marks where each image goes; with no marker the images are prepended.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from sophiavl_cli.data.problem_types import normalize_problem_type
from sophiavl_cli.errors import UserError

# --------------------------------------------------------------------------- released strings

SYSTEM_PROMPT = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    " The reasoning process MUST BE enclosed within <think> </think> tagsdd. The final answer MUST BE enclosed"
    " within <answer> </answer> tags, for example <think>your_thinking_process</think>"
    "<answer>your_final_answer</answer>. If you use formula, please use LaTeX format."
)

QUESTION_INSTRUCTION = (
    "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue"
    " using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or"
    " other natural language thought expressions It's encouraged to include self-reflection or verification in"
    " the reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then give"
    " your final answer between the <answer> </answer> tags."
)

TYPE_SUFFIX: dict[str, str] = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the"
    " <answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the"
    " <answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "text": " Please provide the short text answer within the <answer> </answer> tags.",
}

RM_SYSTEM_PROMPT = "You are a helpful assistant."

# The RM text is split around its two placeholders instead of using str.format: the instruction holds a
# literal "{0, 0.1, 0.2, ..., 1.0}" and the policy prompt/response may hold braces of their own.
_RM_HEAD = (
    "You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is"
    " to judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning"
    " process is good rather than whether the final answer is correct.### Evaluation Criteria:\n"
    "- **Logical Soundness**: Does each step follow logically from the previous one?\n"
    "- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas"
    " correctly stated and applied?\n"
    "- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?\n"
    "- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without"
    " mixing different languages?\n"
    "- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?\n"
    "Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:\n"
    " - **0**: Completely flawed reasoning\n"
    "- **1**: Perfectly sound reasoning\n"
    "- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.\n"
    "Be strict, reward the good process and punish the bad one. You should only output the score without any"
    " explanation.\n"
    "    Question: "
)
_RM_MIDDLE = "\n    Reasoning process: "
_RM_TAIL = "\n    Your response format: <answer>your_score</answer>"


def rm_user_text(prompt_str: str, reasoning_str: str) -> str:
    """The thinking reward model's user text for one rollout (images go after it as image_url parts).

    `prompt_str` is the decoded policy prompt, `reasoning_str` the whole policy response.
    """
    return _RM_HEAD + prompt_str + _RM_MIDDLE + reasoning_str + _RM_TAIL


# --------------------------------------------------------------------------- building messages

PRESETS = ("sophiavl-r1", "none")
IMAGE_MARKER = "<image>"


def question_with_options(question: str, options: Sequence[str] | None, problem_type: str) -> str:
    """The released layout: multiple-choice options joined by "; " and appended to the question as is.

    The released code put no separator between the question and the first option (any line break
    must already end the question text); we keep that byte for byte.
    """
    if problem_type == "multiple choice" and options:
        return question + "; ".join(str(option) for option in options)
    return question


def sophiavl_user_text(question: str, options: Sequence[str] | None, problem_type: str) -> str:
    """The `sophiavl-r1` user text: question (+ options), the thinking instruction, the type suffix."""
    suffix = TYPE_SUFFIX.get(problem_type)
    if suffix is None:
        known = ", ".join(TYPE_SUFFIX)
        raise UserError(
            f"problem_type {problem_type!r} has no sophiavl-r1 prompt suffix (known: {known}); "
            "use data.prompt_preset=none or a data.prompt_template for custom types"
        )
    return question_with_options(question, options, problem_type) + "\n" + QUESTION_INSTRUCTION + suffix


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(keep_trailing_newline=False, autoescape=False)
    return env.from_string(source)


def load_template(template: str) -> str:
    """A template given as a path to an existing file is read; anything else is the template text."""
    looks_like_path = "\n" not in template and "{" not in template and len(template) < 4096
    if looks_like_path:
        path = Path(template).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
        if template.endswith((".jinja", ".j2", ".txt", ".jinja2")):
            raise UserError(f"data.prompt_template: template file {template} does not exist; fix the path")
    return template


def render_template(template: str, *, question: str, options: Sequence[str], problem_type: str) -> str:
    """Render a user template (file path or inline Jinja) in a sandbox."""
    from jinja2 import TemplateError

    source = load_template(template)
    try:
        return _compile(source).render(question=question, options=list(options), problem_type=problem_type)
    except TemplateError as exc:
        raise UserError(f"data.prompt_template: cannot render the template: {exc}") from exc


def user_text(row: Mapping[str, Any], *, preset: str = "sophiavl-r1", template: str | None = None) -> str:
    """The user message text of a row (with `<image>` markers still in it)."""
    question = str(row.get("prompt") or "")
    options = list(row.get("options") or [])
    problem_type = normalize_problem_type(row.get("problem_type"))
    if template is not None:
        return render_template(template, question=question, options=options, problem_type=problem_type)
    if preset == "sophiavl-r1":
        return sophiavl_user_text(question, options, problem_type)
    if preset == "none":
        return question
    raise UserError(f"data.prompt_preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


def _user_content(text: str, num_images: int, row_name: str) -> list[dict[str, Any]]:
    pieces = text.split(IMAGE_MARKER)
    num_markers = len(pieces) - 1
    content: list[dict[str, Any]] = []
    if num_markers == 0:
        content.extend({"type": "image"} for _ in range(num_images))
        content.append({"type": "text", "text": text})
        return content
    if num_markers != num_images:
        raise UserError(
            f"{row_name}: the prompt has {num_markers} {IMAGE_MARKER} marker(s) but {num_images} image(s); "
            f"use one marker per image or none (images are then put first)"
        )
    for index, piece in enumerate(pieces):
        if index > 0:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def build_messages(
    row: Mapping[str, Any], *, preset: str = "sophiavl-r1", template: str | None = None
) -> list[dict[str, Any]]:
    """HF chat messages for one row: optional system message, then the user turn with image slots.

    Example:
        >>> build_messages({"prompt": "<image>How many?", "problem_type": "numerical", "images": ["a.png"]})
        [{'role': 'system', 'content': [...]}, {'role': 'user', 'content': [{'type': 'image'}, ...]}]
    """
    images = row.get("images") or []
    if not isinstance(images, list | tuple):
        images = [images]
    row_name = f"row {row['problem_id']}" if row.get("problem_id") is not None else "row"
    if row.get("source"):
        row_name = f"{row['source']} {row_name}"
    text = user_text(row, preset=preset, template=template)
    messages: list[dict[str, Any]] = []
    if preset == "sophiavl-r1":
        messages.append({"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]})
    messages.append({"role": "user", "content": _user_content(text, len(images), row_name)})
    return messages
