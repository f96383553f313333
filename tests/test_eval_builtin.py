"""`--data builtin`: sample rows of every benchmark in VLMEvalKit's layout, usable with no download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sophiavl_cli.cli.app import main
from sophiavl_cli.eval.benchmarks import BENCHMARKS
from sophiavl_cli.eval.builtin import ROWS, builtin_data_dir
from sophiavl_cli.eval.data import load_samples, open_image
from sophiavl_cli.eval.scoring import score_items


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_has_builtin_rows_in_its_vlmevalkit_layout(name: str) -> None:
    bench = BENCHMARKS[name]
    assert bench.tsv_name in ROWS
    samples = load_samples(bench, Path("builtin"))
    assert (builtin_data_dir() / f"{bench.tsv_name}.tsv").is_file()
    assert all(open_image(s.images[0], s.origin).size == (56, 42) for s in samples)
    gold = {s.index: (s.meta.get("answers") or (s.answer,))[0] for s in samples}
    score = bench.aggregate(samples, score_items(bench, samples, gold))
    assert score.score == {"OCRBench": 2.0, "MME": 400.0}.get(name, 100.0)


def test_the_issue_command_runs_with_the_tiny_model_and_builtin_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--bench", "MathVista", "--model", "builtin:tiny-qwen2.5-vl", "--data", "builtin"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--output-dir", str(tmp_path), "--json"])
    assert exited.value.code == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert (result["benchmark"], result["num_samples"], result["coverage"]["percent"]) == (
        "MathVista",
        3,
        100.0,
    )
    lines = (tmp_path / "MathVista" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["settings"]["max_new_tokens"] for line in lines] == [32, 32, 32]
