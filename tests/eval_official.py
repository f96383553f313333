"""The differential oracle: line-by-line ports of the official scoring rules, kept in the tests.

Each function mirrors one upstream function, control flow and quirks included (Python `eval` of
the fixed test strings, `re.sub` with the flag in the `count` slot, mutation of the choices dict);
only logging and pandas plumbing are left out. The product code in sophiavl_cli/eval must agree
with these on every differential case except the departures docs/eval.md lists.

Sources (read at these commits):
- VLMEvalKit 095a1efead1d093f5502a300d6cea7d4a9a0ee1c (2025-05-24):
  vlmeval/utils/matching_util.py, vlmeval/smp/misc.py, vlmeval/dataset/utils/{yorn,mathvista,mathv,
  mathverse,multiple_choice,vqa_eval}.py, vlmeval/dataset/image_vqa.py (OCRBench.evaluate)
- MathVista 53d525874bdde205128e6b160b7357a88277d479: evaluation/calculate_score.py
- MMMU bb0b95a945998d91dfef37e969e07d49d1139438: mmmu/utils/eval_utils.py
"""

from __future__ import annotations

import copy
import random
import re
import string
from typing import Any

# ---------------------------------------------------------------------- VLMEvalKit matching_util


def can_infer_option(answer: str, choices: dict[str, Any]) -> Any:
    if "Failed to obtain answer via API" in answer:
        return False
    reject_to_answer = [
        "Sorry, I can't help with images of people yet.",
        "I can't process this file.",
        "I'm sorry, but without the image provided",
        "Cannot determine the answer",
    ]
    for err in reject_to_answer:
        if err in answer:
            return "Z"

    def count_choice(splits: list[str], choices: Any, prefix: str = "", suffix: str = "") -> int:
        cnt = 0
        for c in choices:
            if prefix + c + suffix in splits:
                cnt += 1
        return cnt

    answer_mod = copy.copy(answer)
    chars = ".()[],:;!*#{}"
    for c in chars:
        answer_mod = answer_mod.replace(c, " ")
    splits = [x.strip() for x in answer_mod.split()]
    count = count_choice(splits, choices)
    if count == 1:
        for ch in choices:
            if ch in splits:
                return ch
    elif count == 0 and count_choice(splits, {"Z", ""}) == 1:
        return "Z"
    return False


def can_infer_text(answer: str, choices: dict[str, Any]) -> Any:
    answer = answer.lower()
    for k in choices:
        choices[k] = str(choices[k]).lower()
    cands = []
    for k in choices:
        if choices[k] in answer:
            cands.append(k)
    if len(cands) == 1:
        return cands[0]
    return False


def can_infer(answer: Any, choices: dict[str, Any]) -> Any:
    answer = str(answer)
    copt = can_infer_option(answer, choices)
    return copt if copt else can_infer_text(answer, choices)


# ---------------------------------------------------------------------- VLMEvalKit yes/no


def process_punctuation(in_text: str) -> str:
    out_text = in_text
    punct = [
        ";",
        r"/",
        "[",
        "]",
        '"',
        "{",
        "}",
        "(",
        ")",
        "=",
        "+",
        "\\",
        "_",
        "-",
        ">",
        "<",
        "@",
        "`",
        ",",
        "?",
        "!",
    ]
    comma_strip = re.compile(r"(\d)(,)(\d)")
    period_strip = re.compile(r"(?<!\d)\.(?!\d)")
    for p in punct:
        if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return period_strip.sub("", out_text, re.UNICODE)  # upstream passes the flag as count (32)


def yorn_extraction(output: str) -> str:
    s = output.lower()
    words = process_punctuation(s).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "yes" not in words and "no" in words:
        return "No"
    return "Unknown"


# ---------------------------------------------------------------------- MathVista


def list_to_dict(lst: list[Any]) -> dict[str, Any]:
    return {chr(65 + i): val for i, val in enumerate(lst)}


def mathvista_post_check(line: dict[str, Any], prefetch: bool = False) -> Any:
    """VLMEvalKit utils/mathvista.py::post_check."""
    res = None
    ans = line["answer"]
    response = line["prediction"] if prefetch else line["res"]
    try:
        if line["question_type"] == "multi_choice":
            ans = line["answer_option"]
            choices = list_to_dict(eval(line["choices"]))  # eval of fixed test strings, as upstream
            res = can_infer(response, choices)
            if prefetch:
                return res
        else:
            if line["answer_type"] == "integer":
                res = int(response)
                ans = int(line["answer"])
            elif line["answer_type"] == "float":
                res = float(response)
                ans = float(line["answer"])
            else:
                res = str(res)
                ans = str(ans)
    except ValueError:
        pass
    if res == ans:
        return res if prefetch else True
    return False


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (the `Levenshtein.distance` MathVista imports)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def get_most_similar(prediction: str, choices: list[str]) -> str:
    distances = [_distance(prediction, choice) for choice in choices]
    ind = distances.index(min(distances))
    return choices[ind]


def normalize_extracted_answer(
    extraction: Any, choices: list[str], question_type: str, answer_type: str, precision: Any
) -> Any:
    """MathVista evaluation/calculate_score.py (ignore_empty_extractions=False)."""
    if question_type == "multi_choice":
        if isinstance(extraction, str):
            extraction = extraction.strip()
        else:
            try:
                extraction = str(extraction)
            except Exception:
                extraction = ""
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if len(letter) > 0:
            extraction = letter[0].upper()
        sequential_characters = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in sequential_characters:
            option_index = sequential_characters.index(extraction)
            normalized_extraction = choices[option_index]
        else:
            normalized_extraction = get_most_similar(extraction, choices)
        assert normalized_extraction in choices
    elif answer_type == "integer":
        try:
            normalized_extraction = str(int(float(extraction)))
        except Exception:
            normalized_extraction = None
    elif answer_type == "float":
        try:
            normalized_extraction = str(round(float(extraction), int(precision)))
        except Exception:
            normalized_extraction = None
    elif answer_type == "list":
        try:
            normalized_extraction = str(extraction)
        except Exception:
            normalized_extraction = None
    return normalized_extraction


def mathvista_hit(line: dict[str, Any], extraction: str) -> bool:
    """The judged flow: VLMEvalKit's prefetch, else the judge's extraction normalised and matched."""
    fetched = mathvista_post_check(line, prefetch=True)
    if fetched and line["question_type"] == "multi_choice":  # MathVista_acc's post_check on the letter
        return can_infer(str(fetched), list_to_dict(eval(line["choices"]))) == line["answer_option"]
    if fetched:
        return True  # a number prefetches only when it equals the answer
    normalized = normalize_extracted_answer(
        extraction,
        eval(line["choices"]) if line["question_type"] == "multi_choice" else [],
        line["question_type"],
        line["answer_type"],
        line.get("precision"),
    )
    return normalized == line["answer"]


# ---------------------------------------------------------------------- MathVision


def mathv_is_equal(asw: str, gt_asw: str) -> bool:
    """VLMEvalKit utils/mathv.py::is_equal (latex2sympy from latex2sympy2_extended, as upstream now)."""
    from latex2sympy2_extended import latex2sympy

    asw = str(asw).lower().strip()
    gt_asw = str(gt_asw).lower().strip()
    if gt_asw == asw:
        return True
    try:
        a = eval(gt_asw)  # eval of fixed test strings, as upstream
        b = eval(asw)
        if abs(a - b) < 1e-6:
            return True
    except Exception:
        pass
    try:
        a = latex2sympy(gt_asw)
        b = latex2sympy(asw)
        if abs(eval(str(a)) - eval(str(b))) < 1e-6:
            return True
        if abs(a - b) < 1e-6:
            return True
    except Exception:
        pass
    return False


def mathv_post_check(line: dict[str, Any], prefetch: bool = False) -> Any:
    res = None
    ans = line["answer"]
    response = line["prediction"] if prefetch else line["res"]
    try:
        if len(eval(line["choices"])) > 0:
            ans = line["answer"]
            choices = list_to_dict(eval(line["choices"]))
            res = can_infer(response, choices)
            if prefetch:
                return res
        else:
            res = str(response)
            ans = str(ans)
    except ValueError:
        pass
    try:
        if mathv_is_equal(res, ans):
            return res if prefetch else True
        return False
    except Exception:
        return False


def mathvision_hit(line: dict[str, Any], extraction: str) -> bool:
    fetched = mathv_post_check(line, prefetch=True)
    return bool(mathv_post_check({**line, "res": fetched if fetched else extraction}))


# ---------------------------------------------------------------------- MathVerse


def mathverse_hit(line: dict[str, Any], extraction: str, judgement: str) -> bool:
    """Extract (judge, always), then `post_check_score` prefetch, else the scoring judge's 0/1."""
    if str(extraction).strip() == str(line["answer"]).strip():
        return True
    return judgement.strip() == "1"


# ---------------------------------------------------------------------- MMMU eval_utils


def parse_multi_choice_response(
    response: str, all_choices: list[str], index2ans: dict[str, str]
) -> str | None:
    """Upstream draws a random letter when nothing parses; here None marks that case."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if len(candidates) == 0:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
    if len(candidates) == 0 and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if len(candidates) == 0:
        return None
    if len(candidates) > 1:
        start_indexes = []
        if index_ans:
            if ans_with_brack:
                for can in candidates:
                    start_indexes.append(response.rfind(f"({can})"))
            else:
                for can in candidates:
                    start_indexes.append(response.rfind(f" {can} "))
        else:
            for can in candidates:
                start_indexes.append(response.lower().rfind(index2ans[can].lower()))
        return candidates[start_indexes.index(max(start_indexes))]
    return candidates[0]


def check_is_number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(value: str) -> list[Any]:
    value = value.strip()
    if check_is_number(value):
        return [round(float(value.replace(",", "")), 2)]
    value = value.lower()
    if len(value) == 1:
        return [" " + value, value + " "]
    return [value]


def extract_numbers(value: str) -> list[str]:
    pattern_commas = r"-?\b\d{1,3}(?:,\d{3})+\b"
    pattern_scientific = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
    pattern_simple = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    return (
        re.findall(pattern_commas, value)
        + re.findall(pattern_scientific, value)
        + re.findall(pattern_simple, value)
    )


def parse_open_response(response: str) -> list[Any]:
    def get_key_subresponses(response: str) -> list[str]:
        response = response.strip().strip(".").lower()
        sub_responses = re.split(r"\.\s(?=[A-Z])|\n", response)
        indicators_of_keys = [
            "could be ",
            "so ",
            "is ",
            "thus ",
            "therefore ",
            "final ",
            "answer ",
            "result ",
        ]
        key_responses = []
        for index, resp in enumerate(sub_responses):
            if index == len(sub_responses) - 1:
                indicators_of_keys.extend(["="])
            shortest_key_response = None
            for indicator in indicators_of_keys:
                tail = resp.split(indicator)[-1].strip()
                if indicator in resp and (
                    not shortest_key_response or len(tail) < len(shortest_key_response)
                ):
                    shortest_key_response = tail
            if shortest_key_response and shortest_key_response.strip() not in [
                ":",
                ",",
                ".",
                "!",
                "?",
                ";",
                ":",
                "'",
            ]:
                key_responses.append(shortest_key_response)
        if len(key_responses) == 0:
            return [response]
        return key_responses

    key_responses = get_key_subresponses(response)
    pred_list = key_responses.copy()
    for resp in key_responses:
        pred_list.extend(extract_numbers(resp))
    tmp_pred_list = []
    for item in pred_list:
        tmp_pred_list.extend(normalize_str(item))
    return list(set(tmp_pred_list))


def eval_open(gold_i: Any, pred_i: list[Any]) -> bool:
    if isinstance(gold_i, list):
        norm_answers = []
        for answer in gold_i:
            norm_answers.extend(normalize_str(answer))
    else:
        norm_answers = normalize_str(gold_i)
    for pred in pred_i:
        if isinstance(pred, str):
            for norm_ans in norm_answers:
                if isinstance(norm_ans, str) and norm_ans in pred:
                    return True
        elif pred in norm_answers:
            return True
    return False


# ---------------------------------------------------------------------- OCRBench, ChartQA


def ocrbench_hit(prediction: str, answers: list[str], category: str) -> bool:
    predict = str(prediction)
    if category == "Handwritten Mathematical Expression Recognition":
        for j in range(len(answers)):
            answer = answers[j].strip().replace("\n", " ").replace(" ", "")
            predict = predict.strip().replace("\n", " ").replace(" ", "")
            if answer in predict:
                return True
    else:
        for j in range(len(answers)):
            answer = answers[j].lower().strip().replace("\n", " ")
            predict = predict.lower().strip().replace("\n", " ")
            if answer in predict:
                return True
    return False


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    def _to_float(text: str) -> float | None:
        try:
            if text.endswith("%"):
                return float(text.rstrip("%")) / 100.0
            return float(text)
        except ValueError:
            return None

    prediction = str(prediction)
    target = str(target)
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def chartqa_hit(prediction: str, answers: list[str]) -> bool:
    pred = prediction.strip()
    return max(relaxed_correctness(x, pred) for x in answers)


# ---------------------------------------------------------------------- MMBench circular


def mcq_circular_hits(rows: list[dict[str, Any]]) -> dict[int, int]:
    """`mcq_circular_eval` without a judge: main index -> hit, every rotation prefetched right."""
    for row in rows:
        row["g_index"] = int(row["index"] % 1e6)
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["g_index"], []).append(row)
    result: dict[int, int] = {}
    for g_index, group in groups.items():
        if not any(r["index"] == g_index for r in group):
            continue
        hit = 1
        for row in group:
            choices = {ch: row[ch] for ch in string.ascii_uppercase if ch in row and row[ch] is not None}
            pred = can_infer(row["prediction"], choices)
            if pred != row["answer"]:
                hit = 0
                break
        result[g_index] = hit
    return result


def seeded_choice(seed: str, letters: list[str]) -> str:
    """Our per-item replacement of MMMU's random fallback (documented departure)."""
    return random.Random(seed).choice(sorted(letters))
