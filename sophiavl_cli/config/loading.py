"""Recipe files -> validated `Recipe`: safe YAML, dotted overrides, readable errors.

Errors become one `UserError` line per problem naming the file, the dotted path and the fix, with a
did-you-mean for unknown keys, so a typo in a 60-line YAML costs seconds, not a crashed Ray job.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.errors import UserError

M = TypeVar("M", bound=BaseModel)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file with safe loading only (no Python object tags)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found; pass a YAML file such as recipes/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(
            f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax"
        ) from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text; save the recipe as UTF-8") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a recipe must be a mapping of sections (data, algorithm, worker, reward, trainer)"
        )
    return data


BASE_KEY = "base"


def load_recipe_data(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file with its `base:` chain resolved: the base's keys, overridden by this file's.

    `base:` names another recipe (relative to this file's folder, or absolute). Mappings merge key
    by key; any other value (lists included) replaces the base's. A base may name its own base.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise UserError(f"{path}: recipe bases form a cycle ({chain}); remove one base: key")
    data = load_yaml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"{path}: base: must be the path of another recipe file, e.g. base: quickstart.yaml")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise UserError(f"{path}: base recipe {base} not found (looked for {base_path}); fix the base: path")
    return deep_merge(load_recipe_data(base_path, (*_seen, resolved)), data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: nested mappings merged, everything else replaced (copies)."""
    merged = json.loads(json.dumps(base))
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = json.loads(json.dumps(value))
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value), the value typed as YAML would type it."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {text!r}: write it as section.key=value, e.g. trainer.max_steps=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with every dotted override applied (later ones win)."""
    result = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override {text!r}: {'.'.join(path[: i + 1])} is a value, not a section")
            node = child
        node[path[-1]] = value
    return result


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the section that `path` points into (for did-you-mean)."""
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_errors(exc: ValidationError, source: str, model: type[BaseModel] = Recipe) -> str:
    """Turn pydantic errors into lines of `source: path: problem; what to do`."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(recipe)"
        kind = err["type"]
        if kind == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
            lines.append(f"{source}: {dotted}: unknown key; {hint}")
        elif kind == "value_error" and not loc:
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: {dotted}: {err['msg']}{shown}")
    return "\n".join(lines)


def validate_recipe(data: dict[str, Any], source: str = "recipe", model: type[M] = Recipe) -> M:  # type: ignore[assignment]
    """`data` as a `model` (the training `Recipe`, or a sibling such as `RMRecipe`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_errors(exc, source, model)) from exc


def load_recipe(
    path: str | Path | None,
    overrides: list[str] | None = None,
    model: type[M] = Recipe,  # type: ignore[assignment]
) -> M:
    """Defaults < YAML file (its `base:` chain resolved) < overrides, validated as one tree of `model`."""
    data = load_recipe_data(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return validate_recipe(data, source, model)


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of the recipe, for editors (yaml-language-server) and docs."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sophiavl training recipe"
    return schema


def dump_recipe(recipe: BaseModel) -> str:
    """The resolved recipe as YAML, for the run directory. It holds no secrets by construction."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
