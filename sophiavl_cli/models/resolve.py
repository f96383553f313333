"""Model references -> local folders.

A reference is one of, tried in this order:
- a local folder (`./ckpt/step_100/hf`, `~/models/qwen`);
- `builtin:NAME`, a tiny model built on first use into `sophiavl_home()/builtin/`;
- an alias from `sophiavl_cli.hub.names.ALIASES` (`sophiavl-r1-7b`, `thinking-rm`, ...);
- a hub id `owner/name`, which must already be in the local Hugging Face cache: nothing here
  downloads (that is `sophiavl download`), so a run never stalls on the network half way.
"""

from __future__ import annotations

from pathlib import Path

from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import ALIASES, DATASET_ALIASES

BUILTIN_PREFIX = "builtin:"


def resolve_model(ref: str) -> Path:
    """The local folder holding the model `ref` names; raises `UserError` saying how to get it."""
    ref = ref.strip()
    if not ref:
        raise UserError("empty model reference; pass a folder, builtin:NAME, an alias or owner/name")
    local = Path(ref).expanduser()
    if local.is_dir():
        return local.resolve()
    if ref.startswith(BUILTIN_PREFIX):
        from sophiavl_cli.models.builtin import ensure_builtin

        return ensure_builtin(ref[len(BUILTIN_PREFIX) :])
    if ref in DATASET_ALIASES:
        raise UserError(f"{ref} is a dataset alias, not a model; pass a model folder, builtin:NAME or alias")
    repo_id = ALIASES.get(ref, ref)
    if _looks_like_repo_id(repo_id):
        cached = _cached_snapshot(repo_id)
        if cached is not None:
            return cached
        raise UserError(
            f"model {ref} is not in the local cache; run `sophiavl download {ref}` or pass a local folder"
        )
    raise UserError(
        f"model {ref} is neither a folder, builtin:NAME, an alias ({', '.join(sorted(ALIASES))}) "
        "nor an owner/name hub id; check the spelling"
    )


def _looks_like_repo_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~"))


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a model repo, or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None
