"""The one generation layer: stop / pad ids, and hf generation that samples what it is told.

transformers 5 fills every generation field a caller leaves unset from the model folder's
`generation_config.json` (Qwen2.5-VL's sets `repetition_penalty`, `top_k`, `top_p`,
`temperature`). Here the tiny model is copied next to a folder whose generation config sets all of
them (and `no_repeat_ngram_size`): every hf caller (the rollout, infer, the reward server, eval)
must produce exactly what it produces on the folder without those defaults, and greedy decoding
must equal a hand-written argmax loop.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.rollout.hf import HFRollout
from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids
from sophiavl_cli.models import load_vl_model
from sophiavl_cli.models.processing import VLProcessor

PROMPT = [5, 6, 7, 8, 9, 10]
MAX_TOKENS = 24
FOLDER_DEFAULTS = {
    "do_sample": True,
    "repetition_penalty": 2.5,
    "no_repeat_ngram_size": 2,
    "top_k": 2,
    "top_p": 0.3,
    "temperature": 0.2,
}


@pytest.fixture(scope="module")
def with_defaults(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model in a folder whose generation_config.json carries sampling defaults."""
    folder = tmp_path_factory.mktemp("with-generation-defaults")
    for item in tiny_model_dir.iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    config = json.loads((tiny_model_dir / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **FOLDER_DEFAULTS}))
    return folder


def _model(folder: Path) -> torch.nn.Module:
    torch.set_num_threads(1)
    return load_vl_model(folder, dtype=torch.float32, device="cpu")


def _rollout(folder: Path) -> HFRollout:
    stop = stop_token_ids(folder, VLProcessor.from_pretrained(folder).tokenizer)
    return HFRollout(_model(folder), eos_token_ids=stop, pad_token_id=0)


def _run(rollout: HFRollout, sampling: SamplingParams) -> list[tuple[list[int], list[float]]]:
    outputs = rollout.generate([RolloutPrompt(index=0, prompt_ids=PROMPT)], 3, sampling, seed=7)
    return [(o.response_ids, [] if o.logprobs is None else o.logprobs.tolist()) for o in outputs]


def test_stop_ids_are_the_generation_configs_then_the_tokenizers(tiny_model_dir, tmp_path):
    tokenizer = VLProcessor.from_pretrained(tiny_model_dir).tokenizer
    listed = json.loads((tiny_model_dir / "generation_config.json").read_text())["eos_token_id"]
    stop = stop_token_ids(tiny_model_dir, tokenizer)
    assert stop[: len(listed)] == listed and int(tokenizer.eos_token_id) in stop
    assert pad_token_id(tokenizer, stop) == tokenizer.pad_token_id
    # no generation_config.json: the tokenizer's EOS alone; no pad id: the first stop id
    assert stop_token_ids(tmp_path, tokenizer) == [int(tokenizer.eos_token_id)]
    assert pad_token_id(SimpleNamespace(pad_token_id=None), [42, 7]) == 42
    with pytest.raises(UserError, match="names an EOS token"):
        stop_token_ids(tmp_path, SimpleNamespace(eos_token_id=None))


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
        SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, return_logprobs=True),
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.9, top_p=0.95, top_k=40, return_logprobs=True),
    ],
    ids=["greedy", "plain-sampling", "top-p-top-k"],
)
def test_hf_rollout_samples_what_the_recipe_says_not_the_folder_defaults(
    tiny_model_dir, with_defaults, sampling
):
    plain = _run(_rollout(tiny_model_dir), sampling)
    assert _run(_rollout(with_defaults), sampling) == plain
    # the folder's defaults do act on a config that leaves them unset: without the generation
    # layer the same call samples something else (so the equality above is not vacuous)
    model = _model(with_defaults)
    ids = torch.tensor([PROMPT] * 3)
    config = {"max_new_tokens": MAX_TOKENS, "do_sample": not sampling.greedy, "pad_token_id": 0}
    if not sampling.greedy:
        config.update(temperature=sampling.temperature, top_p=sampling.top_p)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        naive = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=torch.zeros_like(ids, dtype=torch.int32),
            generation_config=GenerationConfig(**config),
        )
    ours = _run(_rollout(with_defaults), sampling)
    naive_rows = naive[:, len(PROMPT) :].tolist()
    assert any(row[: len(mine)] != mine for row, (mine, _) in zip(naive_rows, ours, strict=True))


def test_greedy_equals_an_argmax_loop_on_a_folder_with_sampling_defaults(with_defaults):
    rollout = _rollout(with_defaults)
    (first, *_) = rollout.generate(
        [RolloutPrompt(index=0, prompt_ids=PROMPT)],
        1,
        SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0),
        0,
    )
    model, ids = rollout.model, list(PROMPT)
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            x = torch.tensor([ids])
            logits = model(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                mm_token_type_ids=torch.zeros_like(x, dtype=torch.int32),
            ).logits  # [1, T, V]
            ids.append(int(logits[0, -1].argmax()))
            if ids[-1] in rollout.eos_token_ids:
                break
    assert first.response_ids == ids[len(PROMPT) :]


def test_infer_and_the_reward_server_ignore_folder_sampling_defaults(tiny_model_dir, with_defaults):
    from sophiavl_cli.infer.backends import GenerationSettings
    from sophiavl_cli.infer.inferencer import Inferencer, InferRequest
    from sophiavl_cli.serving.chat_request import parse_chat_request
    from sophiavl_cli.serving.hf_engine import HFRewardEngine

    request = InferRequest.create(prompt="How many sides has a square?", problem_type="numerical")
    chat = parse_chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "Rate this."}], "temperature": 0.8, "seed": 3}
    )
    answers = {}
    for folder in (tiny_model_dir, with_defaults):
        torch.set_num_threads(1)
        inferencer = Inferencer(str(folder), backend="hf")
        settings = [
            GenerationSettings(max_new_tokens=16),
            GenerationSettings(max_new_tokens=16, temperature=0.7),
        ]
        infer = [inferencer.generate([request], s)[0].response for s in settings]
        engine = HFRewardEngine(folder, max_new_tokens=16)
        answers[folder] = (infer, engine.generate(chat).text)
    assert answers[with_defaults] == answers[tiny_model_dir]
    assert all(isinstance(text, str) for text in np.ravel(answers[tiny_model_dir][0]))


def test_the_hf_config_names_every_field_a_folder_default_could_fill():
    from sophiavl_cli.generation.hf import NEUTRAL_FIELDS, generation_config

    sampled = generation_config(SamplingParams(max_tokens=4, temperature=0.7), stop_ids=[1], pad_id=0)
    greedy = generation_config(SamplingParams(max_tokens=4, temperature=0.0), stop_ids=[1], pad_id=0)
    for field in [*NEUTRAL_FIELDS, *FOLDER_DEFAULTS, "max_new_tokens", "eos_token_id", "pad_token_id"]:
        assert getattr(sampled, field) is not None, field
    assert (sampled.top_k, sampled.top_p, sampled.repetition_penalty) == (0, 1.0, 1.0)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.0 and greedy.no_repeat_ngram_size == 0
