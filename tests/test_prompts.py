"""Prompt presets: the released SophiaVL-R1 strings byte for byte, image placement, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from sophiavl_cli.data.prompts import RM_SYSTEM_PROMPT, SYSTEM_PROMPT, build_messages, rm_user_text, user_text
from sophiavl_cli.errors import UserError

# Expected strings are written out here, not read from the reference, so a drift in either shows.
EXPECTED_SYSTEM = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer.\n"
    " The reasoning process MUST BE enclosed within <think> </think> tagsdd. The final answer MUST BE enclosed "
    "within <answer> </answer> tags, for example <think>your_thinking_process</think><answer>your_final_answer"
    "</answer>. If you use formula, please use LaTeX format."
)
EXPECTED_TEMPLATE = (
    "{q}\nPlease think about this question as if you were a human pondering deeply. Engage in an internal "
    "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, "
    "or other natural language thought expressions It's encouraged to include self-reflection or verification "
    "in the reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then give "
    "your final answer between the <answer> </answer> tags."
)
EXPECTED_SUFFIX = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
    "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
    "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "text": " Please provide the short text answer within the <answer> </answer> tags.",
}
EXPECTED_RM = """You are an expert reasoning evaluator. I will give you a multimodal question and an answer. Your goal is to judge a reward process and give a score between 0 and 1. You should focus on whether the reasoning process is good rather than whether the final answer is correct.### Evaluation Criteria:
- **Logical Soundness**: Does each step follow logically from the previous one?
- **Correct Reasoning**: Are the methods and steps used appropriate and valid? Are the facts and lemmas correctly stated and applied?
- **Error Identification**: Are there any logical fallacies, unsupported assumptions, or incorrect steps?
- **Language Consistency**: Is the reasoning process conducted in a single, consistent language without mixing different languages?
- **Redundancy**: Is the reasoning concise, without unnecessary repetition or extraneous steps?
Provide a single score from **{0, 0.1, 0.2, ..., 1.0}** based on the reasoning quality, where:
 - **0**: Completely flawed reasoning
- **1**: Perfectly sound reasoning
- Intermediate values (e.g., 0.3, 0.7) should reflect partial correctness or minor errors.
Be strict, reward the good process and punish the bad one. You should only output the score without any explanation.
    Question: PROMPT
    Reasoning process: REASONING
    Your response format: <answer>your_score</answer>"""


def _row(
    prompt: str, problem_type: str, images: list[str] | None = None, options: list[str] | None = None
) -> dict:
    return {"prompt": prompt, "problem_type": problem_type, "images": images or [], "options": options or []}


def _texts(messages: list[dict]) -> str:
    return "".join(part.get("text", "<IMG>") for part in messages[-1]["content"])


def test_system_prompt_is_the_released_string_with_its_typo() -> None:
    assert SYSTEM_PROMPT == EXPECTED_SYSTEM
    assert "tagsdd" in SYSTEM_PROMPT


@pytest.mark.parametrize("problem_type", list(EXPECTED_SUFFIX))
def test_user_text_is_question_template_then_type_suffix(problem_type: str) -> None:
    text = user_text(_row("What is shown?", problem_type, options=["A. x", "B. y"]))
    question = "What is shown?A. x; B. y" if problem_type == "multiple choice" else "What is shown?"
    assert text == EXPECTED_TEMPLATE.format(q=question) + EXPECTED_SUFFIX[problem_type]


def test_multiple_choice_options_are_appended_joined_by_semicolons() -> None:
    text = user_text(_row("Pick one.\n", "multiple choice", options=["A. 3", "B. 4", "C. 5"]))
    assert text.startswith("Pick one.\nA. 3; B. 4; C. 5\nPlease think")


def test_readme_spelling_multiple_choice_gets_the_multiple_choice_suffix() -> None:
    assert user_text(_row("q", "multiple_choice")).endswith(EXPECTED_SUFFIX["multiple choice"])


def test_unknown_type_has_no_sophiavl_suffix() -> None:
    with pytest.raises(UserError, match="'diagram'"):
        user_text(_row("q", "diagram"))


def test_sophiavl_preset_sends_system_then_user_with_image_first_when_no_marker() -> None:
    messages = build_messages(_row("How many?", "numerical", images=["/a.png"]))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": EXPECTED_SYSTEM}]
    assert messages[1]["content"][0] == {"type": "image"}
    assert (
        _texts(messages) == "<IMG>" + EXPECTED_TEMPLATE.format(q="How many?") + EXPECTED_SUFFIX["numerical"]
    )


def test_image_goes_where_the_marker_is() -> None:
    messages = build_messages(_row("Look: <image> How many?", "numerical", images=["/a.png"]))
    content = messages[1]["content"]
    assert content[0] == {"type": "text", "text": "Look: "}
    assert content[1] == {"type": "image"}
    assert content[2]["text"].startswith(" How many?\nPlease think")


def test_two_markers_place_two_images_in_order() -> None:
    messages = build_messages(_row("<image>left <image>right", "free-form", images=["/a.png", "/b.png"]))
    kinds = [part["type"] for part in messages[1]["content"]]
    assert kinds == ["image", "text", "image", "text"]


def test_marker_count_that_differs_from_image_count_names_the_row() -> None:
    row = {**_row("<image><image>q", "numerical", images=["/a.png"]), "source": "mine", "problem_id": 7}
    with pytest.raises(UserError, match=r"mine row 7: the prompt has 2 <image> marker\(s\) but 1 image"):
        build_messages(row)


def test_text_only_rows_have_no_image_part() -> None:
    messages = build_messages(_row("Who wrote Hamlet?", "text"))
    assert all(part["type"] == "text" for part in messages[1]["content"])


def test_none_preset_sends_the_raw_question_without_system_prompt() -> None:
    messages = build_messages(_row("<image>How many?", "numerical", images=["/a.png"]), preset="none")
    assert messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}
    ]


def test_inline_template_replaces_the_user_text_and_keeps_the_system_prompt() -> None:
    template = "Q: {{ question }}{% if options %} Options: {{ options | join(', ') }}{% endif %} [{{ problem_type }}]"
    messages = build_messages(_row("Pick", "multiple choice", options=["A. 1", "B. 2"]), template=template)
    assert messages[0]["role"] == "system"
    assert _texts(messages) == "Q: Pick Options: A. 1, B. 2 [multiple choice]"


def test_template_file_is_read_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "mine.jinja"
    path.write_text("<image>{{ question | upper }}", encoding="utf-8")
    messages = build_messages(_row("abc", "OCR", images=["/a.png"]), preset="none", template=str(path))
    assert messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "ABC"}]


def test_missing_template_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_messages(_row("q", "OCR"), template=str(tmp_path / "nope.jinja"))


def test_templates_run_in_a_sandbox() -> None:
    with pytest.raises(UserError, match="cannot render"):
        build_messages(_row("q", "OCR"), template="{{ question.__class__.__mro__[1].__subclasses__() }}")


def test_unknown_preset_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown preset"):
        build_messages(_row("q", "OCR"), preset="fancy")


def test_thinking_rm_text_is_the_released_string() -> None:
    assert RM_SYSTEM_PROMPT == "You are a helpful assistant."
    assert rm_user_text("PROMPT", "REASONING") == EXPECTED_RM


def test_thinking_rm_text_keeps_braces_of_the_prompt_and_response() -> None:
    text = rm_user_text("Solve {x}", "<think>{0, 1}</think>")
    assert "    Question: Solve {x}\n    Reasoning process: <think>{0, 1}</think>\n" in text
