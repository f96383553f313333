"""`sophiavl plan RECIPE [key=value ...] (--gpu NAME | --gpu-memory GIB) [--json]`: does it fit, before launch.

Offline and in seconds: the recipe with its overrides, the model's shape numbers (its config.json,
or the numbers shipped for the known checkpoints) and the card's memory give each phase's GiB per
GPU, the peak, a verdict against the card minus a margin, the served reward model's GPUs, host
memory per node, and when it does not fit, the cheapest changes that make it fit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sophiavl_cli.cli.options import JsonOutput
from sophiavl_cli.console import console, print_json
from sophiavl_cli.errors import UserError

EPILOG = (
    "Examples: sophiavl plan recipes/fullsets.yaml --gpu H100-80GB  |  "
    "sophiavl plan recipes/fullsets.yaml worker.actor.lora.rank=64 --gpu A100-40GB --json  |  "
    "sophiavl plan my.yaml --gpu-memory 24"
)


def plan_command(
    recipe_file: Annotated[Path, typer.Argument(help="Recipe YAML.", metavar="RECIPE")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted overrides, e.g. worker.actor.lora.rank=64.", show_default=False),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="Card: A100-40GB, A100-80GB, H100-80GB, H200, L40S, RTX4090, B200."),
    ] = None,
    gpu_memory: Annotated[
        float | None, typer.Option("--gpu-memory", help="Memory of one GPU in GiB (a card not in the list).")
    ] = None,
    sdpa: Annotated[
        bool, typer.Option("--sdpa", help="Plan without flash-attention (padded micro-batches, dense masks).")
    ] = False,
    json_out: JsonOutput = False,
) -> None:
    """Per-GPU memory of every phase of a step, the peak, and whether it fits; what to change if not."""
    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.plan import plan_recipe
    from sophiavl_cli.plan.gpus import gpu_by_name, gpu_with_memory

    if (gpu is None) == (gpu_memory is None):
        raise UserError(
            "sophiavl plan: give the card with --gpu NAME or its memory with --gpu-memory GIB (one of them)"
        )
    card = gpu_by_name(gpu) if gpu is not None else gpu_with_memory(float(gpu_memory or 0))
    recipe = load_recipe(recipe_file, overrides or [])
    plan, suggestions = plan_recipe(recipe, card, attention="sdpa" if sdpa else "flash")
    if json_out:
        print_json(plan_json(plan, suggestions))
    else:
        render(plan, suggestions, str(recipe_file), overrides or [])
    if not plan.fits:
        raise typer.Exit(1)


def _gib(value: int) -> float:
    return round(value / 2**30, 2)


def plan_json(plan, suggestions) -> dict:  # type: ignore[no-untyped-def]
    """The plan as plain data: `fits`, `peak_gib`, `phases` (GiB per GPU) and every term behind them."""
    out = {
        "fits": plan.fits,
        "peak_gib": _gib(plan.peak),
        "peak_phase": plan.peak_phase,
        "phases": {p.name: _gib(p.total) for p in plan.phases},
        "terms": {p.name: {k: _gib(v) for k, v in p.terms.items()} for p in plan.phases},
        "gpu": {
            "name": plan.gpu.name,
            "total_gib": _gib(plan.gpu.total_bytes),
            "margin_gib": _gib(plan.gpu.margin_bytes),
            "usable_gib": _gib(plan.gpu.usable_bytes),
        },
        "world_size": plan.recipe.world_size,
        "model": {"params": plan.arch.params, "model_type": plan.arch.model_type, "source": plan.arch.source},
        "attention": plan.attention,
        "host_gib_per_node": {k: _gib(v) for k, v in plan.host_per_node.items()},
        "suggestions": [
            {"change": s.lever, "overrides": s.overrides, "peak_gib": _gib(s.peak), "fits": s.fits}
            for s in suggestions
        ],
    }
    if plan.kv is not None:
        out["kv_cache"] = {
            "tokens": plan.kv.tokens,
            "sequences": plan.kv.sequences,
            "max_model_len": plan.kv.max_model_len,
            "step_tokens": plan.kv.step_tokens,
            "starts": plan.kv.starts,
        }
    if plan.served is not None:
        served = plan.served
        out["reward_model"] = {
            "model": served.model,
            "params": served.params,
            "gpus": served.gpus,
            "per_gpu_gib": {k: _gib(v) for k, v in served.per_gpu.items()},
            "kv_tokens": served.kv.tokens if served.kv else None,
            "max_model_len": served.kv.max_model_len if served.kv else None,
            "fits": served.fits,
        }
    return out


def render(plan, suggestions, source: str, overrides: list[str]) -> None:  # type: ignore[no-untyped-def]
    recipe, arch, gpu = plan.recipe, plan.arch, plan.gpu
    console.print(
        f"[bold]{escape(source)}[/] {escape(' '.join(overrides))}\n"
        f"model {escape(recipe.worker.actor.model_path)}: {arch.params / 1e9:.2f}B parameters "
        f"({escape(arch.source)})\n"
        f"{recipe.world_size} x {escape(gpu.name)} ({_gib(gpu.total_bytes)} GiB, "
        f"{_gib(gpu.margin_bytes)} GiB kept for the CUDA context and fragmentation: "
        f"{_gib(gpu.usable_bytes)} GiB usable); attention: {plan.attention}"
    )
    terms = list(dict.fromkeys(term for phase in plan.phases for term in phase.terms))
    table = Table(title="GiB per GPU, by phase of a step")
    table.add_column("term")
    for phase in plan.phases:
        table.add_column(phase.name, justify="right")
    for term in terms:
        table.add_row(escape(term), *[_cell(phase.terms.get(term)) for phase in plan.phases])
    table.add_row(
        "[bold]total[/]",
        *[f"[bold]{_gib(p.total):.2f}[/]" for p in plan.phases],
        end_section=True,
    )
    console.print(table)
    verdict = "[green]fits[/]" if plan.training_fits else "[red]does not fit[/]"
    console.print(
        f"peak {_gib(plan.peak):.2f} GiB in {plan.peak_phase} of {_gib(gpu.usable_bytes):.2f} usable: {verdict}"
    )
    if plan.kv is not None:
        kv = plan.kv
        state = "" if kv.starts else " [red](below one sequence: vLLM refuses to start)[/]"
        per_sequence = (
            plan.arch.text.state_bytes_per_sequence // plan.recipe.worker.rollout.tensor_parallel_size
        )
        with_state = (
            f" (each also keeps {per_sequence / 2**20:,.0f} MiB of linear-attention state)"
            if per_sequence
            else ""
        )
        console.print(
            f"vLLM KV cache: about {kv.tokens:,} tokens = {kv.sequences} sequences of "
            f"{kv.max_model_len:,}{with_state}{state}; a step's rollouts at full length need {kv.step_tokens:,} per engine"
        )
    if plan.served is not None:
        served = plan.served
        kv_text = (
            f", KV cache about {served.kv.tokens:,} tokens for a context of {served.kv.max_model_len:,}"
            if served.kv
            else ""
        )
        parts = ", ".join(f"{k} {_gib(v):.2f}" for k, v in served.per_gpu.items())
        ok = "[green]fits[/]" if served.fits else "[red]does not fit[/]"
        console.print(
            f"reward model {escape(served.model)} ({served.params / 1e9:.2f}B) on {served.gpus} GPU(s): "
            f"{escape(parts)} GiB each{kv_text}: {ok}"
        )
    host = ", ".join(f"{k} {_gib(v):.1f}" for k, v in plan.host_per_node.items())
    console.print(f"host memory per node (GiB): {escape(host)}")
    if suggestions:
        console.print("[bold]to make it fit[/] (cheapest first; paste after the recipe):")
        for s in suggestions:
            mark = "" if s.fits else " [red](still does not fit)[/]"
            console.print(
                f"  {escape(s.lever)}: {escape(' '.join(s.overrides))}  -> peak {_gib(s.peak):.2f} GiB{mark}"
            )


def _cell(value: int | None) -> str:
    return "" if value is None else f"{_gib(value):.2f}"
