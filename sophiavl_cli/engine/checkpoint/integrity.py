"""Whether a checkpoint on disk is the one that was saved: sizes and xxh3 checksums of every file.

The `complete` marker lists them when the save commits; resume and merge verify against it and
fall back to an older checkpoint when a file is missing, truncated or flipped.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xxhash

from sophiavl_cli.engine.checkpoint.layout import COMPLETE_MARKER

_HASH_CHUNK = 8 * 1024**2


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes (several GB/s: a 7B checkpoint with optimizer state reads in seconds per GB)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "xxh3"}} of every file under `root` except the marker, hashed in parallel."""
    root = Path(root)
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER
    )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda rel: file_checksum(root / rel), files))
    return {
        rel: {"size": (root / rel).stat().st_size, "xxh3": digest}
        for rel, digest in zip(files, sums, strict=True)
    }


def verify_checkpoint(path: Path) -> str | None:
    """None when every file the marker lists is there with its size and checksum; else why not, in one line.

    A checkpoint without a marker is incomplete; one whose marker predates file lists (format 1)
    is accepted as it is (there is nothing to check it against).
    """
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return f"{marker}: missing (the save was interrupted), so the checkpoint is incomplete"
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a format-1 marker: one line naming the step
    if not isinstance(listed, dict) or not isinstance(listed.get("files"), dict):
        return f"{marker}: not a checkpoint marker this version understands"
    entries = sorted(listed["files"].items())
    for rel, entry in entries:  # sizes first: cheap, and they catch truncation without reading anything
        file = path / rel
        if not file.is_file():
            return f"{file}: missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{file}: {size} bytes, {entry['size']} when saved (truncated or replaced)"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda item: file_checksum(path / item[0]), entries))
    for (rel, entry), digest in zip(entries, sums, strict=True):
        if digest != entry["xxh3"]:
            return f"{path / rel}: checksum differs from the one saved (the file is corrupt)"
    return None
