"""Recipe models and loading. Everything below `engine/` receives these frozen objects."""

from sophiavl_cli.config.loading import (
    apply_overrides,
    dump_recipe,
    load_recipe,
    recipe_schema,
    validate_recipe,
)
from sophiavl_cli.config.recipe import Recipe

__all__ = ["Recipe", "apply_overrides", "dump_recipe", "load_recipe", "recipe_schema", "validate_recipe"]
