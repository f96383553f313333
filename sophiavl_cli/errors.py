"""One error type for mistakes a user can fix.

The CLI turns a `UserError` into a single red line and exit code 2, without a traceback: the
message itself must name the file/field and say what to do.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    exit_code = 2


class MissingExtraError(UserError):
    """An optional dependency is needed for what the user asked for."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs `{package}`, which is not installed: "
            f"pip install 'sophiavl[{extra}]' (or pip install {package})"
        )
        self.package = package
        self.extra = extra
