"""Reward-model quality, choice decoding, the RM recipe and the RM data check: pure logic, milliseconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sophiavl_cli.config.loading import load_recipe
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.data.rm_check import check_rm_rows, shared_threshold
from sophiavl_cli.data.rm_rows import RMRow, load_rm_rows
from sophiavl_cli.engine.reward_model.prompting import greedy_choice, score_target
from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards.rm_quality import average_ranks, rm_quality, score_bin, spearman, write_report


def test_quality_numbers_match_a_hand_computation() -> None:
    labels = [0.0, 0.5, 1.0, 0.3]
    predictions = [0.1, 0.5, 0.7, None]
    quality = rm_quality(labels, predictions)
    assert (quality.rows, quality.scored, quality.failures) == (4, 3, 1)
    assert quality.mae == pytest.approx((0.1 + 0.0 + 0.3) / 3)
    assert quality.within == pytest.approx(2 / 3)
    assert quality.spearman == pytest.approx(1.0)
    assert quality.confusion[0][1] == 1 and quality.confusion[5][5] == 1 and quality.confusion[10][7] == 1
    assert quality.mean_label_per_bin[7] == pytest.approx(1.0)


def test_spearman_uses_average_ranks_for_ties_and_reads_zero_for_a_constant_predictor() -> None:
    assert average_ranks([0.5, 0.1, 0.5]).tolist() == [2.5, 1.0, 2.5]
    # rho = Pearson of ranks: x ranks [1, 2, 3, 4], y ranks [1.5, 1.5, 3, 4]
    x, y = [1.0, 2.0, 3.0, 4.0], [1.5, 1.5, 3.0, 4.0]
    mx, my = sum(x) / 4, sum(y) / 4
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    var = (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5
    assert spearman([0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.5, 0.9]) == pytest.approx(cov / var)
    assert spearman([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) == 0.0
    assert spearman([0.1, 0.2, 0.3], [0.9, 0.5, 0.1]) == pytest.approx(-1.0)


def test_score_bins_round_to_the_nearest_tenth_and_targets_are_the_client_choices() -> None:
    assert [score_bin(s) for s in (0.0, 0.04, 0.05, 0.74, 0.75, 1.0)] == [0, 0, 1, 7, 8, 10]
    assert score_target(0.7) == "<answer>0.7</answer>"
    assert score_target(0.0) == "<answer>0</answer>" and score_target(1.0) == "<answer>1.0</answer>"


def test_greedy_choice_follows_the_likeliest_branch_at_each_fork() -> None:
    choices = [[1, 2, 9], [1, 3, 9], [4, 9]]
    # The first token: 1 (-0.1) beats 4 (-2.0); then 3 (-0.2) beats 2 (-1.5), although choice 2
    # alone has the highest summed log-prob (-2.0 + 0) than choice 1 (-0.1 - 0.2 - 5).
    logprobs = [[-0.1, -1.5, -0.1], [-0.1, -0.2, -5.0], [-2.0, 0.0]]
    assert greedy_choice(choices, logprobs) == 1


def test_report_files_are_written(tmp_path: Path) -> None:
    quality = rm_quality([0.0, 0.5, 1.0], [0.0, 0.6, 0.9])
    written = write_report(quality, tmp_path / "report")
    assert [p.name for p in written] == ["report.json", "confusion.md", "calibration.png"]
    assert json.loads(written[0].read_text())["rows"] == 3
    assert written[2].read_bytes().startswith(b"\x89PNG")


def test_rm_recipe_loads_through_the_one_loader_and_rejects_what_it_cannot_honour(tmp_path: Path) -> None:
    recipe = load_recipe(Path("recipes/thinking-rm-quickstart.yaml"), ["trainer.max_steps=3"], model=RMRecipe)
    assert recipe.trainer.max_steps == 3 and recipe.world_size == 2
    with pytest.raises(UserError, match="did you mean 'batch_size'"):
        load_recipe(None, ["data.batch_sise=4"], model=RMRecipe)
    with pytest.raises(UserError, match=r"data.batch_size .* multiple of the world size"):
        load_recipe(None, ["data.batch_size=9", "trainer.n_workers_per_node=2"], model=RMRecipe)
    with pytest.raises(UserError, match="rollout_dump_freq"):
        load_recipe(None, ["trainer.rollout_dump_freq=2"], model=RMRecipe)
    paper = load_recipe(Path("recipes/thinking-rm.yaml"), model=RMRecipe)
    assert paper.trainer.total_epochs == 2 and "Qwen2.5-VL-3B" in paper.model.model_path


def test_the_builtin_set_follows_its_rule_and_is_balanced() -> None:
    from sophiavl_cli.data.thinking_demo import rule_score

    rows = load_rm_rows("builtin:thinking-demo@train")
    assert all(rule_score(row.reasoning) == row.score for row in rows)
    report = check_rm_rows(rows)
    assert len(set(report.histogram)) == 1 and report.shared == [] and report.warnings() == []
    assert all(Path(row.images[0]).is_file() for row in rows[:5])


def test_check_flags_an_image_shared_by_unusually_many_rows(tmp_path: Path) -> None:
    def row(i: int, image: str) -> RMRow:
        return RMRow(f"question {i % 40}", [image], "reasoning", (i % 11) / 10, f"data.json: row {i + 1}")

    rows = [row(i, f"/img/{i}.png") for i in range(200)]
    rows += [row(i, "/img/upload-error.png") for i in range(200, 260)]  # 60 rows, 40 questions
    assert shared_threshold(len(rows)) == 10
    report = check_rm_rows(rows)
    assert [s.image for s in report.shared] == ["/img/upload-error.png"]
    assert report.shared[0].questions == 40
    assert "upload-error.png is used by" in report.warnings()[0]


def test_a_copy_with_other_column_names_loads_by_alias_or_fails_naming_the_column(tmp_path: Path) -> None:
    good = tmp_path / "rm.jsonl"
    good.write_text(json.dumps({"problem": "Q?", "image": "", "response": "R", "label": "0.3"}) + "\n")
    [row] = load_rm_rows(str(good))
    assert (row.question, row.reasoning, row.score, row.images) == ("Q?", "R", 0.3, [])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "reasoning": "R", "grade": 3}) + "\n")
    with pytest.raises(UserError, match=r"no column becomes `score`.*--column SRC=score"):
        load_rm_rows(str(bad))
    out_of_range = tmp_path / "range.jsonl"
    out_of_range.write_text(json.dumps({"question": "Q?", "reasoning": "R", "score": 3}) + "\n")
    with pytest.raises(UserError, match=r"line 1: field score: 3.0 is outside \[0, 1\]"):
        load_rm_rows(str(out_of_range))


def test_check_rm_command_prints_the_histogram_and_fails_on_a_shared_image(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    def check(spec: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sophiavl_cli", "dataset", "check-rm", spec],
            capture_output=True,
            text=True,
            env=dict(os.environ, COLUMNS="200"),
            timeout=120,
        )

    clean = check("builtin:thinking-demo@val")
    assert clean.returncode == 0, clean.stderr
    assert (
        "┃ score ┃ rows ┃ share ┃" in clean.stdout
        and "55 rows; 0 rows without an image" in clean.stdout.replace("\n", "")
        and "images used by more than 10 rows: 0" in clean.stdout.replace("\n", "")
    )
    data = tmp_path / "rm.jsonl"
    rows = [{"question": f"q{i}", "images": ["same.png"], "reasoning": "r", "score": 0.5} for i in range(12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shared = check(str(data))
    assert shared.returncode == 1
    assert "same.png is used by 12 rows" in shared.stdout.replace("\n", "")
