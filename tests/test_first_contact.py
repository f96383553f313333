"""The commands as a new user types them, and what they print: `infer` with only a picture,
`--help` without `<bool>` after flags, and quiet, readable training output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
TINY = "builtin:tiny-qwen2.5-vl"


def sophiavl(*args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": str(columns)},
        cwd=ROOT,
        timeout=300,
    )


def test_infer_with_only_an_image_asks_the_model_to_solve_the_problem_it_shows(tmp_path, tiny_model_dir):
    from sophiavl_cli.cli.infer import IMAGE_QUESTION

    image = tmp_path / "problem.png"
    picture = Image.new("RGB", (120, 60), "white")
    ImageDraw.Draw(picture).text((5, 20), "3 + 4 = ?", fill="black")
    picture.save(image)
    result = sophiavl(
        "infer", "--model", TINY, "--image", str(image), "--type", "numerical", "--json",
        "--max-new-tokens", "3", "--min-pixels", "3136", "--max-pixels", "12544",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["prompt"] == IMAGE_QUESTION and out["images"] == [str(image)]
    assert out["tokens"]["image"] > 0
    refused = sophiavl("infer", "--model", TINY, "--type", "numerical")
    assert refused.returncode == 2 and "--image (the question is the image) or --prompt" in refused.stderr


def test_help_says_the_image_is_the_question_and_shows_no_bool_after_flags():
    infer_help = sophiavl("infer", "--help")
    assert infer_help.returncode == 0
    text = " ".join(infer_help.stdout.split())
    assert "the question is the image itself" in text and "--json" in text
    for command in (["infer"], ["train"], ["merge"], []):
        shown = sophiavl(*command, "--help").stdout
        assert "<bool>" not in shown, command
    assert "<int>" in infer_help.stdout  # options that take a value still show its type


def test_the_per_step_metric_line_is_readable_at_80_columns():
    from rich.console import Console

    from sophiavl_cli.engine.observe.loggers import metrics_table
    from sophiavl_cli.metrics.keys import SUMMARY_KEYS

    metrics = {key: -0.012345678 for key in SUMMARY_KEYS} | {
        "timing/step": 123.456,
        "actor/grad_norm": 9.81e-06,
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(metrics_table(12, 300, metrics, width=console.width))
    lines = console.export_text().splitlines()
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines), lines
    assert "…" not in "".join(lines)  # no header or value cut short
    for header in ("step", "outcome", "final", "kl", "s/step"):
        assert header in lines[0].split()
    wide = Console(width=200, record=True, color_system=None)
    wide.print(metrics_table(12, 300, metrics, width=wide.width))
    assert wide.export_text().splitlines()[0].split() == ["step", *SUMMARY_KEYS.values()]


def test_curves_have_whole_number_step_ticks(tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from sophiavl_cli.engine.observe.curves import PANELS, _draw, read_series

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "reward/outcome": 0.1 * s}) + "\n" for s in (1, 2)))
    series = read_series(metrics)
    panel = next(p for p in PANELS if "reward/outcome" in p.keys)
    fig, ax = plt.subplots()
    _draw(ax, panel, series)
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_known_harmless_fsdp2_and_ray_noise_is_filtered_and_other_warnings_still_show():
    import warnings

    from sophiavl_cli.engine.observe import quiet

    quiet.install(ray_logs=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.install()  # after the catch-all, as at a worker's start
        warnings.warn(
            "FSDP2-wrapped module (Qwen2Model) returned a view tensor. An in-place op ...",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn("something else entirely", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else entirely"]
    # Ray's loggers in a fresh process: an earlier test's ray.init in this one rewires their handlers.
    result = subprocess.run([sys.executable, "-c", _RAY_NOISE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Token authentication" not in result.stderr and "a real Ray problem" in result.stderr


_RAY_NOISE = """
import logging
from sophiavl_cli.engine.observe import quiet
quiet.install(ray_logs=True)
logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
    "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."
)
logging.getLogger("ray").warning("a real Ray problem")
"""


_UNREACHABLE_RM = """
import socket
from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.engine.reward_model.service import ThinkingService
from sophiavl_cli.errors import UserError

with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]  # closed again: nothing listens there
service = ThinkingService(ThinkingRewardConfig(url=f"http://127.0.0.1:{port}/v1", model="rm", max_retries=0), env={})
service.start()
try:
    service.client()
except UserError as exc:
    print("refused:", exc)
service.close()
"""


def test_a_reward_model_that_cannot_be_reached_leaves_no_unclosed_http_session():
    result = subprocess.run(
        [sys.executable, "-c", _UNREACHABLE_RM], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused:" in result.stdout and "unreachable" in result.stdout
    assert "Unclosed client session" not in result.stderr and "Unclosed connector" not in result.stderr
