"""The training prompt path (row -> preset messages -> chat text -> ids) agrees with the model's own processor.

The released models were trained on ids produced by Qwen's processor; if our numpy path drifted
(a different placeholder count, a different template rendering), every rollout would see a prompt
the policy never saw. This checks the engine's PromptBuilder on every demo question type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sophiavl_cli.config.recipe import DataConfig
from sophiavl_cli.data.loader import load_rows
from sophiavl_cli.engine.prompting import PromptBuilder
from sophiavl_cli.models.processing import VLProcessor


@pytest.fixture(scope="module")
def builder_and_reference(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoProcessor

    data = DataConfig(min_pixels=3136, max_pixels=200704)
    processor = VLProcessor.from_pretrained(
        tiny_model_dir, min_pixels=data.min_pixels, max_pixels=data.max_pixels
    )
    reference = AutoProcessor.from_pretrained(
        str(tiny_model_dir), size={"shortest_edge": data.min_pixels, "longest_edge": data.max_pixels}
    )
    return PromptBuilder(processor, data), reference


def test_prompt_ids_equal_the_model_processor_ids_for_every_question_type(builder_and_reference) -> None:  # type: ignore[no-untyped-def]
    builder, reference = builder_and_reference
    rows = load_rows("builtin:demo@train")
    seen: set[str] = set()
    for index in range(len(rows)):
        row = rows[index]
        if row["problem_type"] in seen:
            continue
        seen.add(row["problem_type"])
        built = builder.build(row, index)
        kwargs = {"images": built.images} if built.images else {}
        theirs = reference(text=[built.text], return_tensors="np", **kwargs)
        assert built.prompt.prompt_ids == theirs["input_ids"][0].tolist(), row["problem_type"]
        if built.images:
            assert np.array_equal(built.prompt.image_grid_thw, theirs["image_grid_thw"])
        # the cheap length estimate used to drop over-long rows agrees with the real encoding
        assert builder.prompt_length(row) == len(built.prompt.prompt_ids)
    assert {"numerical", "multiple choice", "OCR", "free-form", "text"} <= seen
