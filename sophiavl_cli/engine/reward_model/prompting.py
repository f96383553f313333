"""Labelled rows -> reward-model training sequences: exactly the prompt the RM is served, plus the score.

The prompt is built by the reward client's own message builder (`rewards.rm_request.build_messages`:
system prompt, the released evaluator text around the question and reasoning, then the images) and
turned into chat messages by the built-in server's own request parser (`serving.chat_request`), so
the token ids trained on are the ones `sophiavl serve-reward` computes for a client request
(a test checks this). Images travel as a 1x1 placeholder data URL through the parser and are
swapped for the real ones at encoding: no PNG round trip per training row.

The target is the assistant turn the chat template renders for `<answer>S</answer>`, S spelled as
the client's constrained choices spell it (`rewards.score_parse.SCORES`: 0, 0.1, ..., 1.0), up to
and including the end-of-turn token; the loss covers these tokens only.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from PIL import Image

from sophiavl_cli.data.images import load_image, open_image
from sophiavl_cli.data.rm_rows import RMRow
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.rewards.rm_quality import score_bin
from sophiavl_cli.rewards.rm_request import ThinkingSample, build_messages
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES
from sophiavl_cli.serving.chat_request import parse_chat_request


@cache
def _placeholder_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def rm_messages(question: str, reasoning: str, num_images: int) -> list[dict[str, object]]:
    """The HF chat messages the built-in server renders for the client's request about this sample."""
    request = build_messages(ThinkingSample(question, reasoning), [_placeholder_url()] * num_images)
    parsed = parse_chat_request({"model": "rm", "messages": request}, max_images=max(num_images, 1))
    return parsed.messages


def score_target(score: float) -> str:
    """The reply the RM is taught for a label: the constrained choice of its 0.1 bin."""
    return SCORE_CHOICES[score_bin(score)]


@dataclass(frozen=True)
class EncodedRow:
    """One row as the workers take it, plus its label."""

    sequence: TrainSequence
    score: float


class RMEncoder:
    """Encodes rows with a model folder's processor (and its chat template's assistant-turn ending)."""

    def __init__(self, processor: VLProcessor) -> None:
        self.processor = processor
        self._choice_ids = {choice: self.target_ids(choice) for choice in SCORE_CHOICES}

    def prompt_text(self, row: RMRow) -> str:
        return self.processor.apply_chat_template(rm_messages(row.question, row.reasoning, len(row.images)))

    def target_ids(self, reply: str) -> list[int]:
        """Token ids of the assistant turn `reply`, end-of-turn token included (trailing newline not)."""
        messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
        prompt = self.processor.apply_chat_template(messages)
        full = self.processor.apply_chat_template(
            [*messages, {"role": "assistant", "content": [{"type": "text", "text": reply}]}],
            add_generation_prompt=False,
        )
        if not full.startswith(prompt):
            raise UserError(
                "the model's chat template renders the assistant turn unexpectedly; use a Qwen2(.5)-VL model"
            )
        tail = full[len(prompt) :].rstrip("\n")
        return list(self.processor.tokenizer.encode(tail, add_special_tokens=False))

    def length(self, row: RMRow) -> int:
        """Prompt + target tokens without decoding pixels (image sizes come from file headers)."""
        ids = self.processor.tokenizer.encode(self.prompt_text(row), add_special_tokens=False)
        extra = 0
        for ref in row.images:
            with open_image(ref, where=row.where) as image:
                extra += self.processor.num_image_tokens(image.height, image.width) - 1
        return len(ids) + extra + len(self._choice_ids[score_target(row.score)])

    def encode(self, row: RMRow, index: int, reply: str | None = None) -> EncodedRow:
        """The row's prompt with `reply` (default: its label's target) as the response."""
        images = [load_image(ref, where=row.where) for ref in row.images]
        encoded = self.processor.encode(self.prompt_text(row), images)
        target = reply if reply is not None else score_target(row.score)
        response = self._choice_ids.get(target) or self.target_ids(target)
        sequence = TrainSequence(
            index=index,
            prompt_ids=list(encoded.input_ids),
            response_ids=response,
            pixel_values=encoded.pixel_values,
            image_grid_thw=encoded.image_grid_thw,
        )
        return EncodedRow(sequence, row.score)

    def encode_batch(self, rows: Sequence[RMRow]) -> list[EncodedRow]:
        return [self.encode(row, i) for i, row in enumerate(rows)]

    def choice_sequences(self, rows: Sequence[RMRow]) -> list[TrainSequence]:
        """Every row x every score choice, index `row * 11 + choice`: for the held-out log-prob pass."""
        out = []
        for r, row in enumerate(rows):
            base = self.encode(row, 0).sequence
            for c, choice in enumerate(SCORE_CHOICES):
                out.append(
                    TrainSequence(
                        index=r * len(SCORE_CHOICES) + c,
                        prompt_ids=base.prompt_ids,
                        response_ids=self._choice_ids[choice],
                        pixel_values=base.pixel_values,
                        image_grid_thw=base.image_grid_thw,
                    )
                )
        return out


def greedy_choice(choices: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]]) -> int:
    """The choice greedy constrained decoding picks, from each choice's teacher-forced token log-probs.

    What the served model answers at temperature 0 under `structured_outputs.choice`
    (`serving.choice_constraint`): at every position where the remaining choices part ways, the
    likeliest of their next tokens wins. Choices sharing a prefix share its log-probs (the same
    conditional distribution), so the first candidate's value stands for each token.

    Example:
        >>> greedy_choice([[5, 1], [5, 2], [6]], [[-0.1, -2.0], [-0.1, -0.5], [-3.0]])
        1
    """
    candidates = list(range(len(choices)))
    depth = 0
    while len(candidates) > 1:
        best: dict[int, float] = {}
        for c in candidates:
            token = choices[c][depth] if depth < len(choices[c]) else -1
            if token not in best:
                best[token] = logprobs[c][depth] if depth < len(logprobs[c]) else float("-inf")
        winner = max(best, key=lambda t: best[t])
        candidates = [
            c for c in candidates if (choices[c][depth] if depth < len(choices[c]) else -1) == winner
        ]
        depth += 1
    return candidates[0]
