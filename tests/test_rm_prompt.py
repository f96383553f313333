"""The RM is trained on exactly the tokens the built-in server computes for the client's request."""

from __future__ import annotations

import numpy as np
import pytest
from model_families import ALL

from sophiavl_cli.data.rm_rows import load_rm_rows
from sophiavl_cli.engine.reward_model.prompting import RMEncoder
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.models.resolve import resolve_model
from sophiavl_cli.rewards.rm_request import ThinkingSample, build_messages, image_to_data_url
from sophiavl_cli.rewards.score_parse import parse_score
from sophiavl_cli.serving.chat_request import parse_chat_request


@pytest.mark.parametrize("name", ALL)
def test_training_prompt_equals_what_the_server_encodes_for_the_client_request(name: str) -> None:
    """With each family's chat template (Qwen3.5's opens `<think>`: the RM's reply starts after the
    assistant header and its target is the bare `<answer>S</answer>`, as for the other families)."""
    processor = VLProcessor.from_pretrained(resolve_model(f"builtin:{name}"))
    encoder = RMEncoder(processor)
    row = load_rm_rows("builtin:thinking-demo@val", limit=1)[0]
    trained = encoder.encode(row, 0).sequence

    # The client's request body for this sample, then the server's own parsing and encoding.
    sample = ThinkingSample(row.question, row.reasoning, tuple(row.images))
    body = {"model": "m", "messages": build_messages(sample, [image_to_data_url(i) for i in row.images])}
    request = parse_chat_request(body)
    served = processor.encode(processor.apply_chat_template(request.messages), request.images)

    assert trained.prompt_ids == served.input_ids
    np.testing.assert_array_equal(trained.pixel_values, served.pixel_values)
    np.testing.assert_array_equal(trained.image_grid_thw, served.image_grid_thw)
    # The target is the label's reply as the client's parser reads it, ending with the end of turn.
    reply = processor.decode(trained.response_ids)
    assert parse_score(reply).score == row.score
    assert processor.decode(trained.response_ids[-1:], skip_special_tokens=False) == "<|im_end|>"
    assert processor.tokenizer.decode(trained.prompt_ids).endswith("<|im_start|>assistant\n")
