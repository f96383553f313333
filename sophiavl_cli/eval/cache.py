"""The prediction cache: how one answer is keyed, and reading a predictions (or shard) file.

A key is sha256(benchmark, index, model, prompt preset, generation settings), so a rerun with the
same settings reuses every answer it finds and other settings never see stale ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sophiavl_cli.fileio import read_jsonl

PREDICTIONS_FILE = "predictions.jsonl"


def prediction_key(bench: str, index: str, model: str, prompt: str, settings: dict[str, Any]) -> str:
    """The cache key of one prediction."""
    payload = json.dumps([bench, index, model, prompt, settings], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """key -> record of every complete line (a line cut by an interrupted run is skipped)."""
    records: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(path, missing_ok=True):
        if isinstance(record, dict) and "key" in record and "prediction" in record:
            records[str(record["key"])] = record
    return records
