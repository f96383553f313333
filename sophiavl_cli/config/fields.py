"""The building blocks of recipe sections: the frozen, strict `Section` base and the string types of
fields that are names, not free text (checked where the recipe is validated).

`trainer.project_name` and `trainer.experiment_name` become folders under `trainer.output_dir`, so
they are single path components (`../../x` wrote outside it). `reward.thinking.api_key_env` names
an environment variable; a value that looks like the key itself is refused, and its error never
shows the value (config/loading.py hides the input of these fields).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_KEY_PREFIXES = ("sk-", "sk_", "hf_", "ghp_", "xai-", "gsk_", "AKIA", "Bearer")


def _check_name(value: str) -> str:
    if not _NAME.match(value) or value in (".", ".."):
        raise ValueError(
            "must be a plain name (letters, digits, '.', '_', '-', '+'; no '/' or '..'): it is a folder under "
            "trainer.output_dir"
        )
    return value


def looks_like_secret(value: str) -> bool:
    """A pasted API key rather than a variable name: a known key prefix, or long random-looking text."""
    if value.startswith(_KEY_PREFIXES):
        return True
    if not _ENV_VAR.match(value):
        return len(value) >= 16 and not any(c.isspace() for c in value)
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return len(value) >= 24 and classes == 3 and "_" not in value


def _check_env_var(value: str) -> str:
    if looks_like_secret(value):
        raise ValueError(
            "this looks like an API key, not the name of an environment variable (value not shown, not saved); "
            "export the key in a variable, e.g. OPENAI_API_KEY, and put that name here"
        )
    if not _ENV_VAR.match(value):
        raise ValueError("must be an environment variable name such as OPENAI_API_KEY (letters, digits, '_')")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
EnvVarName = Annotated[str, AfterValidator(_check_env_var)]


class Section(BaseModel):
    """Base of every recipe section: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
