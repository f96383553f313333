"""Where sophiavl keeps files it builds for the user (built-in models, caches).

One environment variable, `SOPHIAVL_HOME`, moves all of it (tests point it at a temp dir); the
default sits beside the Hugging Face cache under `~/.cache`.
"""

from __future__ import annotations

import os
from pathlib import Path


def sophiavl_home() -> Path:
    """`$SOPHIAVL_HOME`, or `~/.cache/sophiavl` when unset."""
    env = os.environ.get("SOPHIAVL_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sophiavl"


def builtin_dir() -> Path:
    """Folder holding the built-in tiny models, one sub-folder per name and content version."""
    return sophiavl_home() / "builtin"
