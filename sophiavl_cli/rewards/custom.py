"""User-defined answer checkers named in the recipe: `reward.custom: {problem_type: file.py:fn}`.

The function receives the extracted answer (content of the first `<answer>` block, `$` removed)
and the ground truth (inner text of its `<answer>` tags, `$` removed), and returns a score in
[0, 1]; the format gate is applied before it is called, exactly as for the built-in types:

    def score(answer: str, ground_truth: str) -> float: ...

Files are loaded by path (not by import name), so any file works without packaging; every
mistake becomes one `UserError` line naming the recipe field and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from sophiavl_cli.errors import UserError

AnswerScorer = Callable[[str, str], float]
"""(answer, ground_truth) -> score in [0, 1]."""


def _load_module(path: Path, field: str) -> ModuleType:
    resolved = path.resolve()
    name = "sophiavl_custom_reward_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise UserError(f"{field}: {path} cannot be loaded as Python; name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UserError(
            f"{field}: importing {path} failed ({type(exc).__name__}: {exc}); fix the file"
        ) from exc
    return module


class _CheckedReward:
    """Calls the user's function and rejects anything but a finite number in [0, 1]."""

    def __init__(self, fn: AnswerScorer, label: str, problem_type: str) -> None:
        self._fn = fn
        self._label = label
        self._problem_type = problem_type

    def __call__(self, answer: str, ground_truth: str) -> float:
        value = self._fn(answer, ground_truth)
        if isinstance(value, numbers.Real) and math.isfinite(value) and 0.0 <= value <= 1.0:
            return float(value)
        raise UserError(
            f"{self._label} (reward.custom.{self._problem_type}) returned {value!r}; "
            "a reward function must return a number in [0, 1]"
        )


def load_reward_function(spec: str, *, problem_type: str, base_dir: str | Path | None = None) -> AnswerScorer:
    """Load `path/to/file.py:function` as the answer checker of `problem_type`.

    Relative paths resolve against `base_dir` (the recipe's folder, when the caller knows it),
    else the working directory.
    """
    field = f"reward.custom.{problem_type}"
    path_text, sep, fn_name = spec.rpartition(":")
    if not sep or not path_text.strip() or not fn_name.strip():
        raise UserError(
            f"{field}: {spec!r} is not 'path/to/file.py:function'; give a file and a function name"
        )
    path = Path(path_text.strip()).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        where = f"relative to {base_dir}" if base_dir is not None else "relative to the working directory"
        raise UserError(f"{field}: file {path} not found; give an absolute path or one {where}")
    module = _load_module(path, field)
    fn_name = fn_name.strip()
    fn = getattr(module, fn_name, None)
    if fn is None:
        defined = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_")
        )
        listing = ", ".join(defined) if defined else "no public functions"
        raise UserError(f"{field}: {path} has no function {fn_name!r} (it defines: {listing}); fix the name")
    if not callable(fn):
        raise UserError(f"{field}: {path}:{fn_name} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind("answer", "ground truth")
    except TypeError as exc:
        raise UserError(
            f"{field}: {path}:{fn_name} must accept (answer, ground_truth) and return a number in [0, 1] ({exc})"
        ) from exc
    except ValueError:  # no introspectable signature (some builtins): let the first call decide
        pass
    return _CheckedReward(fn, f"{path}:{fn_name}", problem_type)
