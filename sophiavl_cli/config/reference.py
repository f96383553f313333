"""Render every recipe key (path, type, default, meaning) as Markdown for docs/recipes.md.

The docs are generated from the pydantic fields so they cannot drift from the code; a test checks
that the committed page equals this output. Regenerate with `python -m sophiavl_cli.config.reference`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from sophiavl_cli.config.recipe import Recipe

_HEADER = """# Recipe reference

A recipe is a YAML file with the sections below. Precedence: defaults < recipe YAML < dotted
overrides on the command line (`sophiavl train recipe.yaml trainer.max_steps=2 worker.rollout.n=4`).
Unknown keys are rejected with a did-you-mean suggestion; `sophiavl recipe validate FILE` checks a
recipe without starting anything, and `sophiavl recipe schema` prints its JSON Schema (point
`yaml-language-server` at it for autocomplete: `# yaml-language-server: $schema=recipe.schema.json`).

A recipe may start with `base: other.yaml` (a path relative to the recipe's folder): the base's
keys apply first and this file's override them, section by section (lists and values replace).
A base may name its own base.

Shipped recipes: `recipes/quickstart.yaml` (built-in tiny model, demo data, CPU, minutes),
`recipes/fullsets.yaml` (the released SophiaVL-R1 recipe, 8 GPUs), and one per algorithm on the
quickstart setup, each `base: quickstart.yaml`: `dapo.yaml`, `gspo.yaml`, `dr_grpo.yaml`,
`rloo.yaml`, `cispo.yaml`, `sapo.yaml` (docs/method.md, "Algorithms"). Qwen3-VL:
`recipes/qwen3-vl-quickstart.yaml` (the quickstart on the built-in tiny Qwen3-VL, CPU) and
`recipes/qwen3-vl-8b.yaml` (fullsets with Qwen3-VL-8B-Instruct as the policy); docs/models.md.

This page is generated from the code (`python -m sophiavl_cli.config.reference > docs/recipes.md`).
"""


def _type_name(annotation: object) -> str:
    text = repr(annotation) if not isinstance(annotation, type) else annotation.__name__
    for noise in ("typing.", "sophiavl_cli.config.recipe."):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return ""
    else:
        value = field.default
    return json.dumps(value, default=str)


def _section_model(annotation: object) -> type[BaseModel] | None:
    """The section model of a field: `X` or an optional `X | None` where X is a model."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _sections(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, type[BaseModel]]]:
    yield prefix, model
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is not None:
            yield from _sections(section, f"{prefix}.{name}" if prefix else name)


def render_markdown() -> str:
    from sophiavl_cli.config.rm_recipe import RMRecipe

    lines = [_HEADER]
    lines += _model_tables(Recipe)
    lines += [
        "# `sophiavl train-rm` recipes",
        "",
        "The reward-model SFT recipe (`RMRecipe`, e.g. `recipes/thinking-rm.yaml`); `trainer` is the "
        "section above.",
        "",
    ]
    lines += _model_tables(RMRecipe, skip=("trainer",))
    return "\n".join(lines)


def _model_tables(root: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    lines: list[str] = []
    for path, model in _sections(root, ""):
        if path.split(".")[0] in skip:
            continue
        rows = [
            (name, field)
            for name, field in model.model_fields.items()
            if _section_model(field.annotation) is None
        ]
        if not rows:
            continue
        lines += [f"## `{path}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in rows:
            typ = _type_name(field.annotation).replace("|", "\\|")
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | `{typ}` | `{_default(field)}` | {desc} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    print(render_markdown(), end="")
