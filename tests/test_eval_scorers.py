"""Benchmark scorers on the official edge cases: pure functions, milliseconds each."""

from __future__ import annotations

from typing import Any

import pytest

from sophiavl_cli.eval.benchmarks import get_benchmark
from sophiavl_cli.eval.benchmarks.base import HF, TSV, Sample
from sophiavl_cli.eval.benchmarks.chartqa import relaxed_correctness
from sophiavl_cli.eval.benchmarks.mmmu import eval_open, parse_multi_choice, parse_open
from sophiavl_cli.eval.benchmarks.mmstar import split_inline_options
from sophiavl_cli.eval.benchmarks.ocrbench import HME
from sophiavl_cli.eval.matching import answer_text, can_infer, parse_list_literal, yes_no


def _sample(bench: str, layout: str = TSV, **record: Any) -> Sample:
    return get_benchmark(bench).from_record(record, layout, f"fixture row {record.get('index', 0)}", ())


def _mathvista(**overrides: Any) -> Sample:
    record: dict[str, Any] = {
        "index": "1",
        "question": "q",
        "answer": "1.45",
        "question_type": "free_form",
        "answer_type": "float",
        "precision": 2.0,
        "task": "math word problem",
        "skills": "['arithmetic reasoning', 'statistical reasoning']",
    }
    record.update(overrides)
    return _sample("MathVista", **record)


# ---------------------------------------------------------------------- answer extraction


def test_answer_text_takes_the_last_answer_tag_and_falls_back_to_text_outside_think() -> None:
    assert answer_text("<think>x</think><answer>first</answer> <answer> last </answer>") == "last"
    assert answer_text("<think>long reasoning</think>The answer is 4") == "The answer is 4"
    assert answer_text("<think>cut off by the token limit") == "<think>cut off by the token limit"
    assert answer_text("<think>r</think><answer>12") == "12"


def test_one_answer_reader_serves_rewards_first_block_and_eval_last_block() -> None:
    from sophiavl_cli.rewards.format import extract_answer

    text = "<think>t</think><answer> draft </answer> wait <answer>final</answer>"
    assert extract_answer(text, which="first") == "draft"  # the released reward's reading
    assert extract_answer(text, which="last") == "final" == answer_text(text)  # eval's
    assert extract_answer("<answer>open", which="last") is None
    with pytest.raises(ValueError, match=r"first.*last"):
        extract_answer(text, which="middle")  # type: ignore[arg-type]


def test_list_literals_are_read_without_eval() -> None:
    assert parse_list_literal("['24/7', \"it's\", 3]") == ["24/7", "it's", "3"]
    assert parse_list_literal("__import__('os')") is None
    assert parse_list_literal("['unterminated]") is None
    assert parse_list_literal("['new\\nyork', 'tab\\there']") == ["new\nyork", "tab\there"]  # escapes as eval
    assert parse_list_literal("[true, x]") == ["true", "x"]  # not Python: the tokenizer


# ---------------------------------------------------------------------- MathVista


def test_mathvista_float_is_rounded_to_the_item_precision_before_exact_match() -> None:
    bench = get_benchmark("MathVista")
    assert bench.score(_mathvista(), "<answer>1.449</answer>").score == 1.0
    assert bench.score(_mathvista(), "<answer>1.46</answer>").score == 0.0
    one_place = _mathvista(answer="0.6", precision=1.0)
    assert bench.score(one_place, "<answer>0.58</answer>").score == 1.0
    assert bench.score(one_place, "<answer>0.66</answer>").score == 0.0


def test_mathvista_integer_answers_accept_a_float_spelling_and_reject_a_wrong_value() -> None:
    bench = get_benchmark("MathVista")
    sample = _mathvista(answer="14", answer_type="integer", precision=None)
    assert bench.score(sample, "<answer>14.0</answer>").score == 1.0
    assert bench.score(sample, "So there are 14 cubes in total.").score == 1.0
    assert bench.score(sample, "<answer>15</answer>").score == 0.0


def test_mathvista_letter_maps_to_the_choice_text() -> None:
    bench = get_benchmark("MathVista")
    sample = _mathvista(
        answer="square",
        question_type="multi_choice",
        answer_type="text",
        choices="['circle', 'square', 'triangle']",
    )
    for response in ("<answer>B</answer>", "<answer>(B)</answer>", "<answer>square</answer>"):
        item = bench.score(sample, response)
        assert (item.score, item.extracted) == (1.0, "square"), response
    assert bench.score(sample, "<answer>C</answer>").extracted == "triangle"


def test_mathvista_breakdown_counts_each_skill_of_an_item() -> None:
    bench = get_benchmark("MathVista")
    samples = [_mathvista(index=str(i)) for i in range(2)]
    items = [bench.score(samples[0], "<answer>1.45</answer>"), bench.score(samples[1], "<answer>9</answer>")]
    result = bench.aggregate(samples, items)
    assert result.score == 50.0
    assert result.breakdown["skill"]["statistical reasoning"] == (2, 50.0)
    assert result.breakdown["task"]["math word problem"] == (2, 50.0)


def test_mathvista_judge_is_asked_only_when_the_rules_cannot_read_the_answer() -> None:
    bench = get_benchmark("MathVista")
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "1.45"

    assert bench.judge_score(_mathvista(), "<answer>1.45</answer>", ask).method == "prefetch"
    assert not asked
    item = bench.judge_score(_mathvista(), "<answer>about one point four five</answer>", ask)
    assert (item.method, item.score) == ("judge", 1.0)
    assert "about one point four five" in asked[0]


# ---------------------------------------------------------------------- MMMU


def test_mmmu_multiple_choice_prefers_bracketed_letters_and_takes_the_last_one() -> None:
    options = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
    assert parse_multi_choice("(A) is wrong, so (C)", options, seed="s") == ("C", "rule")
    assert parse_multi_choice("B", options, seed="s") == ("B", "rule")
    assert parse_multi_choice("I think the animal in the picture is a dog", options, seed="s") == (
        "B",
        "rule",
    )


def test_mmmu_unparseable_choice_falls_back_to_a_seeded_random_letter() -> None:
    options = {"A": "cat", "B": "dog"}
    first = parse_multi_choice("no idea", options, seed="42-x")
    assert first[1] == "random" and first == parse_multi_choice("no idea", options, seed="42-x")


def test_mmmu_open_answers_are_parsed_after_indicators_and_rounded_numbers_match() -> None:
    assert eval_open(["3.429"], parse_open("The ratio is 3.4286"))
    assert eval_open(["1,000"], parse_open("so the total = 1000"))
    assert eval_open(["Paris"], parse_open("Therefore the capital is paris."))
    assert not eval_open(["3.5"], parse_open("the answer is 3.4"))
    assert 1.5e3 in parse_open("the result is 1.5e3")


def test_mmmu_open_question_with_a_list_gold_answer_and_subject_breakdown() -> None:
    bench = get_benchmark("MMMU")
    sample = bench.from_record(
        {"id": "validation_Art_Theory_3", "question": "q", "options": "[]", "answer": "['24/7', '3.429']"},
        HF,
        "f row 1",
        (),
    )
    item = bench.score(sample, "<think>...</think><answer>3.43</answer>")
    assert item.score == 1.0
    assert item.groups == {"subject": ("Art_Theory",), "discipline": ("Art & Design",)}


def test_mmmu_prompt_is_vlmevalkit_mcq_layout() -> None:
    sample = _sample("MMMU", index="7", question="Pick <image 1>", answer="B", A="x", B="y")
    assert sample.prompt == (
        "Question: Pick <image 1>\nOptions:\nA. x\nB. y\nPlease select the correct answer from the options above. \n"
    )


# ---------------------------------------------------------------------- MMStar / matching


def test_option_matching_needs_exactly_one_standalone_letter_or_option_text() -> None:
    options = {"A": "red", "B": "blue", "C": "green"}
    assert can_infer("B. blue", options) == "B"
    assert can_infer("The color is green", options) == "C"
    assert can_infer("red or blue", options) is None


def test_mmstar_unmatched_answer_is_wrong_and_hf_inline_options_are_split() -> None:
    question, options = split_inline_options("Which is it?\nOptions: A: red, B: blue, C: green, D: pink")
    assert (question, options) == ("Which is it?", ("red", "blue", "green", "pink"))
    bench = get_benchmark("MMStar")
    sample = _sample(
        "MMStar", index="1", question="q", answer="C", A="red", B="blue", C="green", category="cp"
    )
    assert bench.score(sample, "<answer>C</answer>").score == 1.0
    assert bench.score(sample, "I cannot tell").method == "unmatched"


# ---------------------------------------------------------------------- ChartQA


def test_chartqa_relaxed_accuracy_handles_percentages_and_the_5_percent_band() -> None:
    assert relaxed_correctness("45%", "0.45")
    assert relaxed_correctness("0.45", "45%")
    assert not relaxed_correctness("45%", "45")
    assert relaxed_correctness("100", "104.9")
    assert not relaxed_correctness("100", "105.1")
    assert relaxed_correctness("Yes", "yes")
    assert not relaxed_correctness("0", "0.01")  # a zero gold needs text equality, as upstream


def test_chartqa_scores_the_answer_tag_against_any_gold_answer() -> None:
    bench = get_benchmark("ChartQA")
    sample = _sample("ChartQA", index="3", question="q", answer="['12', 'twelve']", split="human")
    assert bench.score(sample, "<think>..</think><answer>twelve</answer>").score == 1.0
    assert sample.prompt == "q\nAnswer the question using a single word or phrase."


# ---------------------------------------------------------------------- OCRBench


def test_ocrbench_hme_ignores_whitespace_and_others_are_case_insensitive_substrings() -> None:
    bench = get_benchmark("OCRBench")
    hme = _sample("OCRBench", index="1", question="q", answer="['x ^ { 2 } + 1']", category=HME)
    assert bench.score(hme, "x^{2}+1").score == 1.0
    assert bench.score(hme, "x^{3}+1").score == 0.0
    text = _sample(
        "OCRBench", index="2", question="q", answer="['STOP']", category="Regular Text Recognition"
    )
    assert bench.score(text, "the sign says stop here").score == 1.0
    result = bench.aggregate([hme, text], [bench.score(hme, "x^{2}+1"), bench.score(text, "go")])
    assert (result.score, result.unit) == (1.0, "points")
    assert result.extra["Text Recognition"] == 0.0 and result.extra["Final Score Norm"] == 50.0


# ---------------------------------------------------------------------- MME


def test_yes_no_extraction_needs_one_of_the_two_words() -> None:
    assert yes_no("Yes, it is.") == "Yes"
    assert yes_no("no") == "No"
    assert yes_no("yes and no") == "Unknown"
    assert yes_no("maybe") == "Unknown"


def test_mme_counts_acc_plus_only_when_both_questions_of_an_image_are_right() -> None:
    bench = get_benchmark("MME")
    rows = [
        ("1", "existence", "a.jpg", "Yes", "yes"),
        ("2", "existence", "a.jpg", "No", "no"),
        ("3", "existence", "b.jpg", "Yes", "yes"),
        ("4", "existence", "b.jpg", "No", "yes"),
        ("5", "code_reasoning", "c.png", "Yes", "yes"),
        ("6", "code_reasoning", "c.png", "No", "no"),
    ]
    samples = [
        _sample("MME", index=i, question="q", answer=a, category=c, image_path=p) for i, c, p, a, _ in rows
    ]
    items = [bench.score(s, r[4]) for s, r in zip(samples, rows, strict=True)]
    result = bench.aggregate(samples, items)
    assert result.breakdown["category"]["existence"] == (4, pytest.approx(75.0 + 50.0))
    assert result.extra["perception"] == pytest.approx(125.0)
    assert result.extra["cognition"] == pytest.approx(200.0)
    assert result.score == pytest.approx(325.0)


# ---------------------------------------------------------------------- MathVerse / MathVision


def test_mathverse_choice_letters_and_free_form_math_equivalence_with_version_breakdown() -> None:
    bench = get_benchmark("MathVerse")
    choice = _sample("MathVerse", index="1", question="q", answer="C", problem_version="Vision Only")
    free = _sample("MathVerse", index="2", question="q", answer="\\frac{1}{2}", problem_version="Text Lite")
    assert bench.score(choice, "<answer>C</answer>").method == "prefetch"
    assert bench.score(choice, "<answer>The answer is C.</answer>").score == 1.0
    assert bench.score(free, "<answer>0.5</answer>").score == 1.0
    result = bench.aggregate([choice, free], [bench.score(choice, "A"), bench.score(free, "0.5")])
    assert result.breakdown["problem_version"] == {"Text Lite": (1, 100.0), "Vision Only": (1, 0.0)}


def test_mathvision_options_are_matched_by_letter_and_free_answers_by_value() -> None:
    bench = get_benchmark("MathVision")
    choice = bench.from_record(
        {"id": "5", "question": "Which?", "options": ["2", "4", "6"], "answer": "B", "subject": "algebra"},
        HF,
        "f row 1",
        (),
    )
    assert choice.prompt == "Which?\n(A) 2\n(B) 4\n(C) 6"
    assert bench.score(choice, "<answer>B</answer>").score == 1.0
    assert bench.score(choice, "<answer>A</answer>").score == 0.0
    free = bench.from_record(
        {"id": "6", "question": "x?", "options": [], "answer": "2\\sqrt{2}"}, HF, "f row 2", ()
    )
    assert bench.score(free, "<answer>\\boxed{2\\sqrt{2}}</answer>").score == 1.0
