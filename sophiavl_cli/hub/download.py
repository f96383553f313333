"""`sophiavl download`: fetch a model or data set by alias or hub id, or materialise a built-in one.

Downloads go through `huggingface_hub.snapshot_download`, so users get what they know from `hf
download`: its progress bars, the HF cache (`HF_HOME` / `HF_HUB_CACHE`) unless `--local-dir` is
given, `HF_ENDPOINT` mirrors, tokens from `HF_TOKEN` or `hf auth login`, and resume of a file
whose connection drops mid-way (the client re-requests the rest with an HTTP `Range`). What this
module adds is the part a training project cares about:

- aliases for the SophiaVL-R1 repos (`sophiavl-r1-7b`, `thinking-rm`, `sophiavl-r1-130k`, ...),
  and `builtin:*` names for the tiny models and demo data that need no network;
- a pre-flight before any byte moves: the repo's file list and sizes (one metadata call), an
  unwritable destination or too little free space reported up front;
- one-line errors for the usual failures (offline, gated or private repo, unknown id), which the
  client reports as multi-line HTTP errors;
- `--register` (in `sophiavl_cli.hub.register`): the data set's parts written to the dataset
  registry with the released column mapping, then the pre-flight data check.

Usage:
    sophiavl download                      # SophiaVL-R1-7B into the HF cache
    sophiavl download thinking-rm
    sophiavl download sophiavl-r1-130k --local-dir data/130k --register
    sophiavl download builtin:tiny-qwen2.5-vl --local-dir models/tiny
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import ALIASES, DATASET_ALIASES, DEFAULT_MODEL

RepoType = Literal["model", "dataset"]
DEFAULT_NAME = DEFAULT_MODEL
BUILTIN_PREFIX = "builtin:"
BUILTIN_DATA = ("demo",)
FREE_SPACE_MARGIN = 64 * 1024 * 1024  # leave room for the cache's metadata and the temp file of a blob


@dataclass(frozen=True)
class DownloadTarget:
    """What a NAME argument stands for: a hub repo, or a built-in model / data set."""

    name: str
    repo_id: str  # for builtin targets: the builtin name without the prefix
    repo_type: RepoType
    builtin: bool = False


@dataclass(frozen=True)
class PlannedDownload:
    """The pre-flight's answer: which commit, which files, how many bytes still to fetch."""

    commit: str | None
    files: tuple[str, ...]
    total_bytes: int
    missing_bytes: int
    destination: Path


@dataclass(frozen=True)
class DownloadResult:
    """Where the files are once the download (or materialisation) finished."""

    target: DownloadTarget
    path: Path
    commit: str | None
    num_files: int
    num_bytes: int


def all_aliases() -> dict[str, tuple[str, RepoType]]:
    """alias -> (repo id, repo type), models and data sets together, for messages and `--help`."""
    out: dict[str, tuple[str, RepoType]] = {alias: (repo, "model") for alias, repo in ALIASES.items()}
    out.update({alias: (repo, "dataset") for alias, (repo, _kind) in DATASET_ALIASES.items()})
    return out


def builtin_names() -> tuple[str, ...]:
    """Every `builtin:` name `sophiavl download` can materialise (models first, then data)."""
    from sophiavl_cli.models.builtin import known_builtins

    return (*known_builtins(), *(f"{BUILTIN_PREFIX}{name}" for name in BUILTIN_DATA))


def resolve_target(name: str | None, repo_type: RepoType | None = None) -> DownloadTarget:
    """NAME (alias, `owner/name`, `builtin:*`, or nothing for SophiaVL-R1-7B) -> the repo to fetch."""
    name = (name or DEFAULT_NAME).strip()
    if name.startswith(BUILTIN_PREFIX):
        short = name[len(BUILTIN_PREFIX) :]
        if name not in builtin_names():
            raise UserError(f"unknown built-in {name}; choose one of {', '.join(builtin_names())}")
        return DownloadTarget(name, short, "dataset" if short in BUILTIN_DATA else "model", builtin=True)
    aliases = all_aliases()
    key = name.lower()
    if key in aliases:
        repo_id, kind = aliases[key]
        if repo_type is not None and repo_type != kind:
            raise UserError(f"{name} is a {kind} alias ({repo_id}); drop --repo-type {repo_type}")
        return DownloadTarget(name, repo_id, kind)
    parts = name.split("/")
    if len(parts) == 2 and all(p and p == p.strip() and not p.startswith(".") for p in parts):
        return DownloadTarget(name, name, repo_type or "model")
    raise UserError(
        f"{name!r} is neither an alias ({', '.join(aliases)}), builtin:NAME nor an owner/name hub id; "
        "check the spelling"
    )


# --------------------------------------------------------------------------- pre-flight


def hf_cache_dir() -> Path:
    """The HF hub cache the client writes to (`HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def check_writable(folder: Path) -> None:
    """Create `folder` and a scratch file in it; any failure is a one-line `UserError` now, not mid-download."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(
            f"cannot write to {folder} ({reason}); pass --local-dir to a writable folder or set HF_HOME"
        ) from exc


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start when the files cannot fit on the disk holding `folder`."""
    free = shutil.disk_usage(folder).free
    if needed + FREE_SPACE_MARGIN > free:
        raise UserError(
            f"{folder} has {human_size(free)} free but the download needs {human_size(needed)}; free some space or "
            "pass --local-dir on a larger disk (--include/--exclude fetch a part)"
        )


def plan_download(
    target: DownloadTarget,
    *,
    local_dir: Path | None,
    revision: str | None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    token: str | None = None,
) -> PlannedDownload:
    """Ask the hub for the file list with sizes, then check the destination can take them."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    destination = local_dir if local_dir is not None else hf_cache_dir()
    created = not destination.exists()
    check_writable(destination)
    try:
        info = HfApi(token=token).repo_info(
            target.repo_id, repo_type=target.repo_type, revision=revision, files_metadata=True
        )
    except Exception as exc:
        if created and local_dir is not None and not any(local_dir.iterdir()):
            local_dir.rmdir()  # a failed look-up leaves no empty folder behind
        raise explain_hub_error(exc, target, revision) from exc
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    files = tuple(
        filter_repo_objects(
            sizes, allow_patterns=list(include) or None, ignore_patterns=list(exclude) or None
        )
    )
    if sizes and not files:
        raise UserError(
            f"no file of {target.repo_id} matches --include {list(include)} / --exclude {list(exclude)}; "
            "fix the patterns (shell-style globs such as '*.json')"
        )
    snapshot = None
    if local_dir is None and info.sha:
        from huggingface_hub.file_download import repo_folder_name

        snapshot = destination / repo_folder_name(repo_id=target.repo_id, repo_type=target.repo_type)
        snapshot = snapshot / "snapshots" / info.sha
    have = local_dir if local_dir is not None else snapshot
    missing = sum(sizes[f] for f in files if have is None or not (have / f).is_file())
    check_free_space(destination, missing)
    return PlannedDownload(info.sha, files, sum(sizes[f] for f in files), missing, destination)


# --------------------------------------------------------------------------- download


def download(
    target: DownloadTarget,
    *,
    local_dir: Path | None = None,
    revision: str | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    token: str | None = None,
) -> DownloadResult:
    """Fetch `target` (or build it, for `builtin:*`) and return where its files are.

    Offline (`HF_HUB_OFFLINE=1`) a repo already in the cache is returned as it is; otherwise the
    error says so in one line. Tokens: `token`, else what huggingface_hub finds (`HF_TOKEN`, the
    stored login); the token never appears in a message.
    """
    if target.builtin:
        return materialise_builtin(target, local_dir)
    from huggingface_hub import constants, snapshot_download

    plan = None
    if not constants.is_offline_mode():
        plan = plan_download(
            target, local_dir=local_dir, revision=revision, include=include, exclude=exclude, token=token
        )
    try:
        path = snapshot_download(
            target.repo_id,
            repo_type=target.repo_type,
            revision=revision,
            local_dir=local_dir,
            allow_patterns=list(include) or None,
            ignore_patterns=list(exclude) or None,
            token=token,
        )
    except Exception as exc:
        raise explain_hub_error(exc, target, revision) from exc
    if plan is None:
        files = [p for p in Path(path).rglob("*") if p.is_file() and ".cache" not in p.parts]
        return DownloadResult(target, Path(path), None, len(files), sum(p.stat().st_size for p in files))
    return DownloadResult(target, Path(path), plan.commit, len(plan.files), plan.total_bytes)


def materialise_builtin(target: DownloadTarget, local_dir: Path | None) -> DownloadResult:
    """Build a built-in model or the demo data; copy it into `local_dir` when one is given.

    Without `--local-dir` the files stay in sophiavl's cache (`$SOPHIAVL_HOME/builtin`), which is
    where `builtin:` references resolve, so `sophiavl download builtin:demo` is a warm-up.
    """
    if target.repo_id in BUILTIN_DATA:
        from sophiavl_cli.data.demo import resolve_demo

        source = resolve_demo()
    else:
        from sophiavl_cli.models.builtin import ensure_builtin

        source = ensure_builtin(target.repo_id)
    path = source
    if local_dir is not None:
        if local_dir.exists() and (not local_dir.is_dir() or any(local_dir.iterdir())):
            raise UserError(
                f"--local-dir {local_dir} exists and is not an empty folder; pick a new or empty one"
            )
        check_writable(local_dir.parent if not local_dir.exists() else local_dir)
        files = [p for p in source.rglob("*") if p.is_file()]
        check_free_space(
            local_dir.parent if not local_dir.exists() else local_dir, sum(p.stat().st_size for p in files)
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{local_dir.name}.", dir=local_dir.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            if local_dir.exists():
                local_dir.rmdir()
            os.replace(staging, local_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        path = local_dir.resolve()
    files = [p for p in path.rglob("*") if p.is_file()]
    return DownloadResult(target, path, None, len(files), sum(p.stat().st_size for p in files))


# --------------------------------------------------------------------------- errors


def explain_hub_error(exc: BaseException, target: DownloadTarget, revision: str | None = None) -> UserError:
    """The client's exception (and its causes) -> one line saying what happened and what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, UserError):
        return exc
    repo = f"{target.repo_type} {target.repo_id}"
    chain = _cause_chain(exc)
    endpoint = constants.ENDPOINT
    aliases = ", ".join(all_aliases())
    login = "pass --token, set HF_TOKEN or run `hf auth login`"
    for err in chain:
        if isinstance(err, GatedRepoError):
            return UserError(
                f"{repo} is gated: accept its terms at {endpoint}/{_page(target)} with your account, then {login}"
            )
        if isinstance(err, RevisionNotFoundError):
            return UserError(
                f"{repo} has no revision {revision!r}; pass an existing branch, tag or commit to --revision"
            )
        if isinstance(err, HfHubHTTPError) and err.response is not None:
            status = err.response.status_code
            if status == 401:
                return UserError(
                    f"{repo} needs a token (private or gated repo, 401 from {endpoint}), or does not exist: "
                    f"{login}; check the id (aliases: {aliases})"
                )
            if status == 403:
                return UserError(
                    f"{repo}: access forbidden (403): the repo is gated and your token has no access, or the token "
                    f"lacks read permission; request access at {endpoint}/{_page(target)} and use a read token"
                )
            if isinstance(err, RepositoryNotFoundError) or status == 404:
                other = "--repo-type dataset" if target.repo_type == "model" else "--repo-type model"
                return UserError(
                    f"{repo} does not exist on {endpoint} (404); check the id, use an alias ({aliases}) "
                    f"or try {other}"
                )
            return UserError(
                f"{repo}: the hub at {endpoint} answered HTTP {status}; retry later or set HF_ENDPOINT"
            )
    if any(isinstance(err, OfflineModeIsEnabled) for err in chain) or (
        isinstance(exc, LocalEntryNotFoundError) and constants.is_offline_mode()
    ):
        return UserError(
            f"offline (HF_HUB_OFFLINE is set) and {repo} is not in the HF cache {hf_cache_dir()}; unset "
            "HF_HUB_OFFLINE to download, or copy the files to a folder and pass that folder (or --local-dir)"
        )
    if any(_is_connection_error(err) for err in chain) or isinstance(exc, LocalEntryNotFoundError):
        reason = next((str(err).splitlines()[0] for err in chain if _is_connection_error(err)), "no answer")
        return UserError(
            f"cannot reach {endpoint} for {repo} ({reason}); check the network or set HF_ENDPOINT to a mirror, "
            "or use a copy already in the HF cache or a local folder (--local-dir)"
        )
    for err in chain:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return UserError(
                f"the disk filled up while downloading {repo}; free some space and run the same command"
            )
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(
        f"downloading {repo} failed: {first_line}; run the same command again (finished files are kept)"
    )


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_connection_error(err: BaseException) -> bool:
    try:
        import httpx2 as httpx  # the client huggingface_hub 2.x ships with
    except ImportError:  # older huggingface_hub releases use httpx itself
        import httpx
    return isinstance(err, httpx.ConnectError | httpx.TimeoutException | ConnectionError)


def _page(target: DownloadTarget) -> str:
    return f"datasets/{target.repo_id}" if target.repo_type == "dataset" else target.repo_id


def human_size(num_bytes: int) -> str:
    """`1.2 GB`: decimal units, as the hub shows file sizes."""
    from rich.filesize import decimal

    return decimal(num_bytes)
