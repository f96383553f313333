"""Outcome rewards: format gate, every built-in question type, custom types, timeouts, purity."""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards import (
    KNOWN_TYPES,
    OutcomeScorer,
    canonical_type,
    extract_answer,
    score_format,
    score_outcome,
    score_outcome_detailed,
)
from sophiavl_cli.rewards.answer import numerical_score, option_letters
from sophiavl_cli.rewards.deadline import call_with_deadline

REPO = Path(__file__).resolve().parents[1]


def reply(answer: str) -> str:
    """A well-formed response whose answer block holds `answer`."""
    return f"<think>Let me think. Hmm, wait.</think>\n<answer>{answer}</answer>"


# ----------------------------------------------------------------------------- per-type tables

NUMERICAL = [
    ("\\frac{1}{2}", "0.5", 1.0),
    ("0.5", "<answer>$\\frac{1}{2}$</answer>", 1.0),
    ("$$\\dfrac{3}{4}$$", "0.75", 1.0),
    ("\\frac12", "0.5", 1.0),
    ("5 cm", "5", 1.0),
    ("5", "5 cm", 1.0),
    ("50%", "50", 1.0),
    ("50\\%", "50", 1.0),
    ("50%", "0.5", 0.0),  # decided: % is dropped, not read as /100
    ("\\sqrt{2}", "1.41421356", 1.0),  # math-verify fallback
    ("\\pi", "3.14159265", 1.0),
    ("2/4", "1/2", 1.0),  # math-verify: mathruler alone wants reduced fractions
    ("1,000", "1000", 1.0),
    ("3.0", "3", 1.0),
    ("x = 5", "5", 1.0),
    ("-3", "- 3", 1.0),
    ("\\$12", "12", 1.0),
    ("3.14", "3.1416", 0.0),
    ("0.333", "1/3", 0.0),
    ("twelve", "12", 0.0),
    ("", "5", 0.0),
]

CHOICE = [
    ("B", "B", 1.0),
    ("B", "<answer>B</answer>", 1.0),
    ("(B)", "B", 1.0),
    ("[B]", "B", 1.0),
    ("B.", "B", 1.0),
    ("B)", "B", 1.0),
    ("b", "B", 1.0),
    ("B. 40", "B", 1.0),
    ("(B) 40 cm", "B", 1.0),
    ("B. 4, 5 and 6", "B", 1.0),
    ("Option B", "B", 1.0),
    ("The answer is B", "B", 1.0),
    ("**B**", "B", 1.0),
    ("\\boxed{B}", "B", 1.0),
    ("\\text{(B)}", "B", 1.0),
    ("C", "B", 0.0),
    ("A", "AB", 0.0),  # the released substring test accepted this
    ("B", "A, B", 0.0),
    ("A, C", "C,A", 1.0),
    ("C and A", "A, C", 1.0),
    ("AC", "A,C", 1.0),
    ("A; C", "(A) (C)", 1.0),
    ("A, C", "A, B, C", 0.0),
    ("A cat", "A", 0.0),  # a word, not an option letter
    ("B 40", "B", 0.0),  # a letter needs ( ) . : or to stand alone
    ("40", "40", 1.0),  # a ground truth without letters is compared as text
    ("forty", "40", 0.0),
    ("no", "NO", 1.0),  # only A-H run together as a solid multi-select
    ("", "B", 0.0),
]

OCR = [
    ("hello world", "hello world", 1.0),
    ("hello   world ", "hello world", 1.0),
    ("hello word", "hello world", math.exp(-0.5)),
    ("Hello world", "hello world", math.exp(-0.5)),  # case counts
    ("the quick brown", "the quick brown fox", math.exp(-0.25)),  # partial transcription
    ("", "hello world", 0.0),
]

FREE_FORM = [
    ("a red car", "a red car", 1.0),
    ("Cats running", "cat runs", 1.0),  # Porter stemming
    ("blue sky", "red car", 0.0),
    ("你好世界", "你好世界", 1.0),
    ("", "a red car", 0.0),
]


@pytest.mark.parametrize(("answer", "truth", "expected"), NUMERICAL)
def test_numerical_answers_are_scored_by_value(answer: str, truth: str, expected: float) -> None:
    assert score_outcome(reply(answer), truth, "numerical") == expected


@pytest.mark.parametrize(("answer", "truth", "expected"), CHOICE)
def test_multiple_choice_compares_option_letter_sets(answer: str, truth: str, expected: float) -> None:
    assert score_outcome(reply(answer), truth, "multiple choice") == expected


@pytest.mark.parametrize(("answer", "truth", "expected"), OCR)
def test_ocr_scores_exp_of_minus_word_error_rate(answer: str, truth: str, expected: float) -> None:
    assert score_outcome(reply(answer), truth, "OCR") == pytest.approx(expected)


@pytest.mark.parametrize(("answer", "truth", "expected"), FREE_FORM)
@pytest.mark.parametrize("problem_type", ["free-form", "text"])
def test_free_form_and_text_score_mean_rouge_f1(
    answer: str, truth: str, expected: float, problem_type: str
) -> None:
    assert score_outcome(reply(answer), truth, problem_type) == pytest.approx(expected)


def test_partial_free_form_answer_scores_between_zero_and_one() -> None:
    score = score_outcome(reply("a red car parked outside"), "a red car", "free-form")
    # rouge1 F = 2*3/(5+3), rouge2 F = 2*2/(4+2), rougeL F = rouge1 here
    assert score == pytest.approx((0.75 + 2 / 3 + 0.75) / 3)


def test_partial_chinese_answer_gets_partial_rouge_credit() -> None:
    assert 0.0 < score_outcome(reply("你好"), "你好世界", "text") < 1.0


def test_ascii_rouge_equals_rouge_score_default_tokenizer_with_stemmer() -> None:
    from rouge_score import rouge_scorer

    stock = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = [
        ("The runners were running quickly to the station.", "A runner ran quickly toward the stations!"),
        ("x-ray images, 2019-2020: increasing trends", "X-ray imaging shows an increasing trend in 2020"),
        ("It's the dog's bone.", "the dogs' bones"),
    ]
    for answer, truth in pairs:
        expected = sum(s.fmeasure for s in stock.score(truth, answer).values()) / 3
        assert score_outcome(reply(answer), truth, "free-form") == pytest.approx(expected)


# ----------------------------------------------------------------------------- format gate


@pytest.mark.parametrize(
    "response",
    [
        "<answer>B</answer>",
        "<think>because</think> B",
        "B",
        "<answer>B</answer><think>because</think>",
        "Sure! <think>because</think><answer>B</answer>",
        "<think>because<answer>B</answer>",
        "",
    ],
)
def test_responses_without_the_think_then_answer_shape_score_zero(response: str) -> None:
    assert score_format(response) == 0.0
    assert score_outcome(response, "B", "multiple choice") == 0.0


def test_format_gate_allows_leading_whitespace_and_trailing_text() -> None:
    response = "\n <think>x</think>\nso\n<answer>B</answer> done<|im_end|>"
    assert score_format(response) == 1.0
    assert score_outcome(response, "B", "multiple choice") == 1.0


def test_the_first_answer_block_is_the_answer() -> None:
    response = "<think>x</think><answer>A</answer><answer>B</answer>"
    assert extract_answer(response, which="first") == "A"
    assert score_outcome(response, "B", "multiple choice") == 0.0
    assert extract_answer("no tags", which="first") is None


def test_empty_answer_passes_format_but_scores_zero_for_every_type() -> None:
    for problem_type in KNOWN_TYPES:
        detail = score_outcome_detailed("<think>x</think><answer>  </answer>", "a b", problem_type)
        assert detail == {"overall": 0.0, "format": 1.0, "accuracy": 0.0}


def test_detailed_score_reports_format_and_gated_accuracy() -> None:
    assert score_outcome_detailed(reply("B"), "B", "multiple choice") == {
        "overall": 1.0,
        "format": 1.0,
        "accuracy": 1.0,
    }
    assert score_outcome_detailed("<answer>B</answer>", "B", "multiple choice") == {
        "overall": 0.0,
        "format": 0.0,
        "accuracy": 0.0,
    }


def test_format_weight_gives_well_formed_wrong_answers_partial_credit() -> None:
    wrong = score_outcome_detailed(reply("C"), "B", "multiple choice", format_weight=0.1)
    right = score_outcome_detailed(reply("B"), "B", "multiple choice", format_weight=0.1)
    assert wrong["overall"] == pytest.approx(0.1)
    assert right["overall"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- problem types


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("multiple_choice", "multiple choice"),
        ("Multiple Choice", "multiple choice"),
        ("free_form", "free-form"),
        ("free form", "free-form"),
        ("FREE-FORM", "free-form"),
        ("ocr", "OCR"),
        ("numerical", "numerical"),
    ],
)
def test_problem_type_spellings_are_accepted(spelling: str, canonical: str) -> None:
    assert canonical_type(spelling) == canonical
    assert score_outcome(reply("B"), "B", spelling) >= 0.0


def test_unknown_problem_type_is_rejected_naming_the_known_types() -> None:
    with pytest.raises(ValueError, match=r"'geometry'.*numerical, multiple choice, OCR, free-form, text"):
        score_outcome(reply("B"), "B", "geometry")


def test_option_letters_reads_sets() -> None:
    assert option_letters("Options A and c") == frozenset("AC")
    assert option_letters("I think") is None


# ----------------------------------------------------------------------------- custom types

IOU_FILE = """
def iou(answer: str, ground_truth: str) -> float:
    a, b = (float(x) for x in answer.split("-"))
    c, d = (float(x) for x in ground_truth.split("-"))
    inter = max(0.0, min(b, d) - max(a, c))
    return inter / (max(b, d) - min(a, c))


def two_args_required(answer, ground_truth, extra):
    return 1.0


def out_of_range(answer, ground_truth):
    return 1.7


NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(IOU_FILE, encoding="utf-8")
    return path


def test_custom_type_is_scored_by_the_named_function_behind_the_format_gate(reward_file: Path) -> None:
    scorer = OutcomeScorer({"interval": f"{reward_file}:iou"})
    assert scorer.known_types == (*KNOWN_TYPES, "interval")
    assert scorer.score(reply("0-2"), "<answer>1-3</answer>", "interval") == pytest.approx(1 / 3)
    assert scorer.score("<answer>1-3</answer>", "1-3", "interval") == 0.0
    assert scorer.score(reply("B"), "B", "multiple_choice") == 1.0
    assert scorer.score_detailed(reply("1-3"), "1-3", "interval") == {
        "overall": 1.0,
        "format": 1.0,
        "accuracy": 1.0,
    }


def test_custom_path_is_relative_to_base_dir(reward_file: Path) -> None:
    scorer = OutcomeScorer({"interval": "my_rewards.py:iou"}, base_dir=reward_file.parent)
    assert scorer.score(reply("1-3"), "1-3", "interval") == 1.0


def test_custom_entry_for_a_builtin_type_replaces_it(reward_file: Path) -> None:
    scorer = OutcomeScorer({"ocr": f"{reward_file}:iou"})
    assert scorer.known_types == KNOWN_TYPES
    assert scorer.score(reply("0-2"), "1-3", "OCR") == pytest.approx(1 / 3)


def test_scorer_rejects_unknown_types_naming_custom_ones_too(reward_file: Path) -> None:
    scorer = OutcomeScorer({"interval": f"{reward_file}:iou"})
    with pytest.raises(ValueError, match=r"'bbox'.*text, interval"):
        scorer.score(reply("B"), "B", "bbox")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{dir}/missing.py:iou", r"reward\.custom\.interval: file .*missing\.py not found"),
        ("{file}", r"reward\.custom\.interval: .* is not 'path/to/file\.py:function'"),
        ("{file}:nope", r"has no function 'nope' \(it defines: iou, out_of_range, two_args_required\)"),
        ("{file}:NOT_A_FUNCTION", r"NOT_A_FUNCTION is a int, not a function"),
        ("{file}:two_args_required", r"must accept \(answer, ground_truth\)"),
    ],
)
def test_bad_custom_reward_specs_are_one_line_user_errors(reward_file: Path, spec: str, message: str) -> None:
    spec = spec.format(dir=reward_file.parent, file=reward_file)
    with pytest.raises(UserError, match=message):
        OutcomeScorer({"interval": spec})


def test_custom_file_that_fails_to_import_is_a_user_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"importing .*broken\.py failed \(ModuleNotFoundError"):
        OutcomeScorer({"interval": f"{broken}:fn"})


def test_custom_reward_outside_zero_one_is_a_user_error_naming_the_function(reward_file: Path) -> None:
    scorer = OutcomeScorer({"interval": f"{reward_file}:out_of_range"})
    with pytest.raises(UserError, match=r"out_of_range \(reward\.custom\.interval\) returned 1\.7"):
        scorer.score(reply("1"), "1", "interval")


def test_scorer_survives_pickling_for_ray_workers(reward_file: Path) -> None:
    scorer = OutcomeScorer({"interval": f"{reward_file}:iou"}, format_weight=0.2)
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone.known_types == scorer.known_types
    assert clone.score(reply("0-2"), "1-3", "interval") == pytest.approx(0.8 / 3 + 0.2)


# ----------------------------------------------------------------------------- timeouts and threads


def _spin(seconds: float, finished: list[bool] | None = None) -> str:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    if finished is not None:
        finished.append(True)
    return "done"


def test_deadline_stops_a_busy_call_in_the_main_thread() -> None:
    assert threading.current_thread() is threading.main_thread()
    finished: list[bool] = []
    assert call_with_deadline(lambda: _spin(30.0, finished), 0.05) is None
    assert not finished  # interrupted, not waited out
    assert call_with_deadline(lambda: _spin(0.0), 5.0) == "done"


def test_deadline_stops_a_busy_call_in_a_worker_thread() -> None:
    finished: list[bool] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(call_with_deadline, lambda: _spin(30.0, finished), 0.05).result(timeout=20) is None
        assert not finished


def test_deadline_never_leaks_its_interrupt_when_the_call_ends_at_the_limit() -> None:
    # Calls that finish right around the limit exercise the stop/fire race; any leak would raise here.
    results = [call_with_deadline(lambda: _spin(0.002), 0.002) for _ in range(200)]
    assert set(results) <= {"done", None}
    _spin(0.05)  # a late interrupt would surface during this loop


def test_numerical_latex_fallback_works_off_the_main_thread() -> None:
    # math-verify's own timeout uses signal.alarm, which raises outside the main thread.
    # Pairs used nowhere else, so the comparison cache cannot answer for the threads.
    pairs = [
        ("\\sqrt{3}", "1.7320508"),
        ("\\sqrt{5}", "2.2360680"),
        ("\\sqrt{6}", "2.4494897"),
        ("4/14", "2/7"),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        scores = list(pool.map(lambda pair: score_outcome(reply(pair[0]), pair[1], "numerical"), pairs))
    assert scores == [1.0] * 4


def test_numerical_comparison_past_its_timeout_scores_zero() -> None:
    equal = ("\\sqrt{2} + \\sqrt{3}", "3.14626437")  # needs sympy: takes milliseconds
    assert numerical_score(*equal, timeout=None) == 1.0
    assert numerical_score(*equal, timeout=1e-6) == 0.0


ADVERSARIAL_NUMBERS = [
    "10^{10^{10}}",
    "9^{9^9}",
    "2^(2^100)",
    "(10^{6})!",
    "\\binom{10^{9}}{10^{5}}",
    "10^{99999}",
]


def test_answers_that_would_evaluate_forever_score_zero_quickly() -> None:
    # In a child process: a regression would hang inside C code, where no timeout reaches.
    code = (
        "import sys\n"
        "from sophiavl_cli.rewards.answer import numerical_score\n"
        "print([numerical_score(a, '12', timeout=5) for a in sys.argv[1:]])\n"
    )
    out = subprocess.run(  # the timeout is the hang guard (6 answers x 5 s at most by design)
        [sys.executable, "-c", code, *ADVERSARIAL_NUMBERS], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([0.0] * len(ADVERSARIAL_NUMBERS))


@pytest.mark.timeout(60)  # linear: milliseconds; a quadratic scan of 100k tags: many minutes
def test_format_check_is_linear_on_degenerate_repetitions() -> None:
    assert score_format("<think>" + "</think><answer>" * 5000) == 0.0
    assert extract_answer("<answer>" * 100_000, which="first") is None


def test_format_check_equals_the_released_regex_on_random_tag_soup() -> None:
    import random
    import re

    released = re.compile(r"<think>.*</think>.*<answer>.*</answer>.*", re.DOTALL)
    first_answer = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "x", " ", "\n", "<", ">"]
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choices(pieces, k=rng.randint(0, 10)))
        assert (score_format(text) == 1.0) == (released.fullmatch(text.lstrip()) is not None), text
        match = first_answer.search(text)
        assert extract_answer(text, which="first") == (match.group(1).strip() if match else None), text


# ----------------------------------------------------------------------------- purity


def test_rewards_and_trust_code_import_neither_torch_nor_ray_nor_openai() -> None:
    # -S skips the site hooks (the test venv's .pth shim preloads torch into every interpreter).
    code = (
        "import sys\n"
        "from sophiavl_cli.rewards import score_outcome\n"
        "import sophiavl_cli.algo, sophiavl_cli.metrics\n"
        "r = '<think>x</think><answer>{}</answer>'\n"
        "for t, a in [('numerical', '\\\\frac{1}{2}'), ('multiple choice', 'B'), ('OCR', 'a b'), ('text', 'a b')]:\n"
        "    score_outcome(r.format(a), '0.5', t)\n"
        "print(sorted(m for m in ('torch', 'ray', 'openai') if m in sys.modules))\n"
    )
    env = {"PYTHONPATH": f"{REPO}:{sysconfig.get_paths()['purelib']}", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_docstring_examples_hold() -> None:
    import doctest

    from sophiavl_cli.rewards import answer, format, outcome

    for module in (answer, format, outcome):
        assert doctest.testmod(module).failed == 0
