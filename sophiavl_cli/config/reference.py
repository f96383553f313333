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
`rloo.yaml` (docs/method.md, "Algorithms").

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


def _sections(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, type[BaseModel]]]:
    yield prefix, model
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _sections(annotation, f"{prefix}.{name}" if prefix else name)


def render_markdown() -> str:
    lines = [_HEADER]
    for path, model in _sections(Recipe, ""):
        rows = [
            (name, field)
            for name, field in model.model_fields.items()
            if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
        ]
        if not rows:
            continue
        lines += [f"## `{path}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in rows:
            typ = _type_name(field.annotation).replace("|", "\\|")
            desc = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{name}` | `{typ}` | `{_default(field)}` | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
