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

# What a recipe may expand to. The longest shipped recipe has ~120 values 4 levels deep; these bounds
# stop an alias bomb (`a: &a [x, x]`, `b: &b [*a, *a]`, ...) or thousands of nested maps in one
# line, before PyYAML builds them or pydantic walks them.
MAX_RECIPE_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_NODES = 20_000
# What every recipe file must set itself (the defaults are for trying things out, not a run).
REQUIRED_KEYS = (("worker", "actor", "model_path"), ("data", "train_files"))
# Fields whose rejected value is never shown: a key pasted where its variable's name belongs.
SECRET_LIKE_FIELDS = ("api_key_env",)
M = TypeVar("M", bound=BaseModel)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file with safe loading only (no Python object tags), within MAX_* bounds."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found; pass a YAML file such as recipes/quickstart.yaml")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise UserError(
            f"{path}: {path.stat().st_size} bytes, more than a recipe may be ({MAX_RECIPE_BYTES}); is it a recipe?"
        )
    try:
        data = bounded_yaml(path.read_text(encoding="utf-8"), str(path))
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


def bounded_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` that first checks the composed node graph: depth, expanded size, no cycles."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_bounds(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(
            f"{source}: nested deeper than {MAX_DEPTH} levels; a recipe is a few sections of keys"
        ) from None
    finally:
        loader.dispose()


def _check_bounds(root: yaml.Node, source: str) -> None:
    """Walk the node graph once per distinct node (aliases share nodes) and bound what it expands to."""
    seen: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise UserError(
                f"{source}: nested deeper than {MAX_DEPTH} levels; a recipe is a few sections of keys"
            )
        key = id(node)
        if key in seen:
            size, height = seen[key]
            if depth + height > MAX_DEPTH:
                raise UserError(f"{source}: nested deeper than {MAX_DEPTH} levels (through YAML aliases)")
            return size, height
        if key in open_nodes:
            raise UserError(f"{source}: a YAML alias refers to the value that contains it; remove the cycle")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        open_nodes.add(key)
        size, height = 1, 0
        for child in children:
            child_size, child_height = visit(child, depth + 1)
            size, height = size + child_size, max(height, child_height + 1)
            if size > MAX_NODES:
                raise UserError(
                    f"{source}: expands to more than {MAX_NODES} values (YAML aliases repeated?); "
                    "a recipe is a few sections of keys"
                )
        open_nodes.discard(key)
        seen[key] = (size, height)
        return size, height

    visit(root, 0)


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
        value = bounded_yaml(raw, f"override {key}") if raw.strip() else ""
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
            hidden = isinstance(got, dict) or (loc and str(loc[-1]) in SECRET_LIKE_FIELDS)
            shown = "" if hidden else f" (got {got!r})"
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
    """Defaults < YAML file (its `base:` chain resolved) < overrides, validated as one tree of `model`.

    A training recipe file (with its overrides) must name its model and data: an empty file would
    otherwise train the built-in defaults on 8 workers without a word.
    """
    data = load_recipe_data(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    recipe = validate_recipe(data, source, model)
    if path is not None and model is Recipe:
        missing = [".".join(keys) for keys in REQUIRED_KEYS if not _has(data, keys)]
        if missing:
            raise UserError(
                f"{source}: a recipe must name its model and data; set {' and '.join(missing)} "
                "(see recipes/quickstart.yaml)"
            )
    return recipe


def _has(data: dict[str, Any], keys: tuple[str, ...]) -> bool:
    node: Any = data
    for key in keys:
        if not isinstance(node, dict) or node.get(key) in (None, ""):
            return False
        node = node[key]
    return True


def recipe_schema() -> dict[str, Any]:
    """JSON Schema of the recipe, for editors (yaml-language-server) and docs."""
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sophiavl training recipe"
    return schema


def dump_recipe(recipe: BaseModel) -> str:
    """The resolved recipe as YAML, for the run directory. It holds no secrets by construction."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
