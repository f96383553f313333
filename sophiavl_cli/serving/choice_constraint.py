"""Constrain generation to one of a fixed list of strings (vLLM's `structured_outputs.choice`).

A token trie over the choices' token ids: at each step only tokens that continue some choice are
allowed, and end-of-sequence only once a whole choice has been produced. Greedy decoding under
this mask picks, token by token, the likeliest continuation that stays inside the list, which is
what vLLM's grammar-constrained choice does. Each choice is allowed in its canonical tokenization.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_END = -1  # trie key marking "a choice ends here"


class ChoiceTrie:
    """Prefix tree of token-id sequences."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("choices must be non-empty token sequences")
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(int(token), {})
            node[_END] = {}
        self.max_length = max(len(s) for s in sequences)

    def _node(self, prefix: Sequence[int]) -> dict[int, dict] | None:
        node: dict[int, dict] | None = self.root
        for token in prefix:
            node = node.get(int(token)) if node is not None else None
        return node

    def next_tokens(self, prefix: Sequence[int]) -> tuple[list[int], bool]:
        """(tokens that continue a choice after `prefix`, whether `prefix` is a whole choice)."""
        node = self._node(prefix)
        if node is None:
            return [], False
        return [t for t in node if t != _END], _END in node


class ChoiceLogitsProcessor:
    """A transformers logits processor masking everything outside the trie.

    `prompt_length` separates the prompt from the generated tokens in `input_ids` (the padded
    width in a left-padded batch). `trie` is one trie for every row, or one per row, where None
    leaves that row unconstrained (a batch mixing constrained and free requests).
    """

    def __init__(
        self,
        trie: ChoiceTrie | Sequence[ChoiceTrie | None],
        prompt_length: int,
        eos_token_ids: Sequence[int],
    ) -> None:
        if not eos_token_ids:
            raise ValueError("need at least one end-of-sequence token id")
        self.tries: ChoiceTrie | list[ChoiceTrie | None] = (
            trie if isinstance(trie, ChoiceTrie) else list(trie)
        )
        self.prompt_length = prompt_length
        self.eos_token_ids = list(eos_token_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.zeros_like(scores)  # [batch, vocab]
        for row in range(input_ids.shape[0]):
            trie = self.tries if isinstance(self.tries, ChoiceTrie) else self.tries[row]
            if trie is None:
                continue
            mask[row] = float("-inf")
            generated = input_ids[row, self.prompt_length :].tolist()
            allowed, complete = trie.next_tokens(generated)
            if complete:
                allowed = allowed + self.eos_token_ids
            if not allowed:  # off the trie (cannot happen under this mask): end the sequence
                allowed = self.eos_token_ids
            mask[row, allowed] = 0.0
        return scores + mask


def match_choice(
    generated: Sequence[int], encoded: dict[str, list[int]], eos_token_ids: Sequence[int]
) -> str | None:
    """The choice whose token ids were generated (up to the first EOS), or None."""
    eos = set(eos_token_ids)
    ids: list[int] = []
    for token in generated:
        if token in eos:
            break
        ids.append(token)
    for choice, tokens in encoded.items():
        if tokens == ids:
            return choice
    return None
