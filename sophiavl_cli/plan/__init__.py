"""`sophiavl plan`: whether a recipe fits its GPUs, phase by phase, before anything is launched.

Pure arithmetic over the recipe and the model's shape numbers (its `config.json`, or numbers
shipped for the known checkpoints): no torch, no Ray, no weights. `architecture` reads the
numbers and counts parameters exactly; `activations` sizes what a forward saves; `memory` adds up
each phase of a step on one GPU; `suggest` finds the cheapest changes when the peak does not fit;
`gpus` names the cards. docs/plan.md explains every term.
"""

from __future__ import annotations

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.plan.architecture import Architecture, architecture_from_config
from sophiavl_cli.plan.gpus import Gpu
from sophiavl_cli.plan.known import model_config
from sophiavl_cli.plan.memory import Plan, plan_run, plan_served
from sophiavl_cli.plan.suggest import Suggestion, suggest


def architecture_of(ref: str) -> Architecture:
    """The shape numbers of the model `ref` names (folder, builtin:*, alias, hub id)."""
    config, source = model_config(ref)
    return architecture_from_config(config, source)


def plan_recipe(recipe: Recipe, gpu: Gpu, *, attention: str = "flash") -> tuple[Plan, list[Suggestion]]:
    """The plan of `recipe` on `gpu` cards (the served reward model's included), and when the training
    GPUs do not fit, the cheapest changes that make them fit."""
    arch = architecture_of(recipe.worker.actor.model_path)
    serve = recipe.reward.thinking.serve
    rm_arch = architecture_of(serve.model) if serve is not None else None

    def planner(candidate: Recipe) -> Plan:
        return plan_run(candidate, arch, gpu, attention=attention)

    plan = planner(recipe)
    if rm_arch is not None:
        plan = Plan(**{**plan.__dict__, "served": plan_served(recipe, rm_arch, gpu)})
    return plan, ([] if plan.training_fits else suggest(recipe, planner))


__all__ = ["Plan", "Suggestion", "architecture_of", "plan_recipe"]
