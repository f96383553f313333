"""Options more than one subcommand takes, declared once (Typer reads the `Annotated` metadata).

Each is a type; the default stays with the command (`min_pixels: MinPixels = MIN_PIXELS`), because
infer, eval and `dataset check` start from different pixel bounds for good reasons (the training
recipe's, VLMEvalKit's, the recipe's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelRef = Annotated[
    str | None,
    typer.Option("--model", help="Model folder, builtin:NAME, alias or owner/name in the local HF cache."),
]
Backend = Annotated[str, typer.Option("--backend", help="Generation backend: hf (transformers) or vllm.")]
MaxNewTokens = Annotated[
    int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate at most per answer.")
]
MinPixels = Annotated[
    int, typer.Option("--min-pixels", help="Images below this many pixels (w*h) are upscaled.")
]
MaxPixels = Annotated[
    int, typer.Option("--max-pixels", help="Images above this many pixels (w*h) are downscaled.")
]
Preset = Annotated[
    str, typer.Option("--preset", help="Prompt preset: sophiavl-r1 (the training prompt) or none.")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of tables or panels.")]
Registry = Annotated[
    Path | None,
    typer.Option(
        "--registry",
        help="Dataset registry file (default $SOPHIAVL_DATASET_REGISTRY or ./dataset_info.json).",
    ),
]
