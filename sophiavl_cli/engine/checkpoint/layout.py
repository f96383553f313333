"""What a checkpoint folder holds and how its files are named (docs/checkpoints.md).

Shared by the rank side (`sharded.py`), the driver side (`store.py`), integrity checks and merge,
so a name is spelled in one place.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

CHECKPOINTS_DIRNAME = "checkpoints"
DCP_DIRNAME = "dcp"
HF_DIRNAME = "huggingface"
DRIVER_STATE_FILE = "driver_state.json"
RECIPE_FILE = "recipe.yaml"
COMPLETE_MARKER = "complete"
LATEST_POINTER = "latest"
STEP_DIR_RE = re.compile(r"^global_step_(\d+)$")
FORMAT_VERSION = 1
MARKER_FORMAT = 2  # 1: the marker was one line naming the step (no file list; still accepted)

# Files of a Hugging Face folder that are not weights: everything else is copied into `huggingface/`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIRNAME


def step_of(path: Path) -> int | None:
    """N for a `global_step_N` folder name, else None."""
    match = STEP_DIR_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """A committed checkpoint: final name, marker, driver state and DCP metadata all present."""
    path = Path(path)
    return (
        step_of(path) is not None
        and (path / COMPLETE_MARKER).is_file()
        and (path / DRIVER_STATE_FILE).is_file()
        and (path / DCP_DIRNAME / ".metadata").is_file()
    )


def copy_hf_files(source: Path, dest: Path) -> list[Path]:
    """Copy config / tokenizer / processor / chat template / generation config files (not weights)."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for file in sorted(source.iterdir()):
        skip = (
            file.name.startswith(".") or file.name.endswith(_WEIGHT_SUFFIXES) or file.name in _WEIGHT_INDEXES
        )
        if skip or not file.is_file():
            continue
        shutil.copy2(file, dest / file.name)
        copied.append(dest / file.name)
    return copied
