"""Rank-side code for the checkpoint and merge tests: real FSDP2 over gloo in spawned processes.

Functions here run inside `torch.multiprocessing.spawn` children (they must be importable by name),
write what they observed to files, and the test process compares. Every child sets one torch
thread, gives `init_process_group` a short timeout and calls `dist.barrier()` before
`destroy_process_group()` (without it gloo sporadically aborts at exit).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.fsdp import fully_shard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run `fn(rank, world_size, port, *args)` on `world_size` gloo ranks; re-raises a child's error."""
    mp.spawn(fn, args=(world_size, free_port(), *args), nprocs=world_size, join=True)


def init_gloo(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )


def finish() -> None:
    dist.barrier()
    dist.destroy_process_group()


class TinyNet(nn.Module):
    """Three layers with odd sizes, so Shard(0) splits unevenly across 2 ranks."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.embed = nn.Linear(7, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.head = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.embed(x))
        for block in self.blocks:
            h = torch.tanh(block(h))
        return self.head(h)


def shard(model: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """FSDP2 the way the engine does: each block, then the root."""
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def tiny_net(seed: int, sharded: bool = True, lr: float = 0.05) -> tuple[TinyNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyNet()
    if sharded:
        shard(model, list(model.blocks))
    return model, torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def batch(step: int) -> torch.Tensor:
    """The same input on every rank, so the averaged gradient is the same at any world size."""
    return torch.randn(4, 7, generator=torch.Generator().manual_seed(100 + step))


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    optimizer.zero_grad()
    model(batch(step)).square().mean().backward()
    optimizer.step()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Unsharded copies of parameters and optimizer state, for bit-exact comparison in the test."""
    options = StateDictOptions(full_state_dict=True)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    return {
        "model": {k: v.detach().clone() for k, v in model_state.items()},
        "optimizer": {
            name: {slot: v.detach().clone() if torch.is_tensor(v) else v for slot, v in slots.items()}
            for name, slots in optim_state["state"].items()
        },
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optim_state["param_groups"]],
    }


def assert_identical(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    assert actual["optimizer"].keys() == expected["optimizer"].keys()
    for name, slots in expected["optimizer"].items():
        assert slots.keys() == actual["optimizer"][name].keys()
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(actual["optimizer"][name][slot]), torch.as_tensor(value)), (
                name,
                slot,
            )
    assert actual["param_groups"] == expected["param_groups"]


def rank0_save(obj: Any, path: Path) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(obj, path)


# --------------------------------------------------------------------------- checkpoint scenarios


def save_after_one_step(rank: int, world_size: int, port: int, step_dir: str, out: str) -> None:
    """Train one step, save, record the state; then a second step and record again."""
    from sophiavl_cli.engine.checkpoint.sharded import save_rank_extras, save_sharded
    from sophiavl_cli.engine.parallel.rng import capture_rng

    init_gloo(rank, world_size, port)
    model, optimizer = tiny_net(seed=0)
    train_step(model, optimizer, step=1)
    save_sharded(Path(step_dir), model, optimizer)
    torch.manual_seed(1234 + rank)
    save_rank_extras(Path(step_dir), rank, {"rng": capture_rng(), "note": f"rank {rank}"})
    draws = torch.rand(3)
    rank0_save(full_state(model, optimizer), Path(out) / "after_save.pt")
    torch.save(draws, Path(out) / f"draws_rank_{rank}.pt")
    train_step(model, optimizer, step=2)
    rank0_save(full_state(model, optimizer), Path(out) / "after_next.pt")
    finish()


def load_and_continue(rank: int, world_size: int, port: int, step_dir: str, out: str) -> None:
    """Fresh model (other init) + fresh optimizer, load, record; then the second step and record."""
    from sophiavl_cli.engine.checkpoint.sharded import load_rank_extras, load_sharded
    from sophiavl_cli.engine.parallel.rng import restore_rng

    init_gloo(rank, world_size, port)
    model, optimizer = tiny_net(seed=99, lr=0.07)  # the saved lr (0.05) must come back too
    load_sharded(Path(step_dir), model, optimizer)
    extras = load_rank_extras(Path(step_dir), rank)
    torch.save({"extras_found": extras is not None}, Path(out) / f"extras_ws{world_size}_rank_{rank}.pt")
    if extras is not None:
        restore_rng(extras["rng"])
        torch.save(torch.rand(3), Path(out) / f"draws_resumed_rank_{rank}.pt")
    rank0_save(full_state(model, optimizer), Path(out) / f"loaded_ws{world_size}.pt")
    train_step(model, optimizer, step=2)
    rank0_save(full_state(model, optimizer), Path(out) / f"next_ws{world_size}.pt")
    finish()


def load_without_process_group(step_dir: Path) -> dict[str, Any]:
    """One plain process, no process group, no FSDP: DCP reads the full tensors."""
    from sophiavl_cli.engine.checkpoint.sharded import load_sharded

    model, optimizer = tiny_net(seed=99, sharded=False, lr=0.07)
    load_sharded(step_dir, model, optimizer)
    loaded = full_state(model, optimizer)
    train_step(model, optimizer, step=2)
    return {"loaded": loaded, "next": full_state(model, optimizer)}


def kill_me_while_saving(checkpoints_dir: str, params_millions: int) -> None:
    """Subprocess body for the kill -9 test: begin a save of a big model and never get to commit."""
    from sophiavl_cli.engine.checkpoint.sharded import save_sharded
    from sophiavl_cli.engine.checkpoint.store import CheckpointManager

    torch.set_num_threads(1)
    model = nn.Sequential(*[nn.Linear(1000, 1000) for _ in range(params_millions)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1000)).sum().backward()
    optimizer.step()
    manager = CheckpointManager(Path(checkpoints_dir), save_limit=2)
    tmp = manager.begin(step=2)
    print(f"saving into {tmp}", flush=True)
    save_sharded(tmp, model, optimizer)
    print("saved shards", flush=True)
    manager.commit(tmp, step=2, driver_state={"data": {"position": 2}})


if __name__ == "__main__":  # python tests/fsdp_fixtures.py kill_me_while_saving DIR N
    globals()[sys.argv[1]](sys.argv[2], int(sys.argv[3]))


# --------------------------------------------------------------------------- tiny Qwen2.5-VL scenarios


def vl_inputs(model_dir: str) -> dict[str, torch.Tensor]:
    """One image (a 4x4 patch grid -> 4 merged image tokens) plus a few text tokens, built by hand."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = torch.arange(10, 22).tolist()
    ids = [
        config["vision_start_token_id"],
        *[config["image_token_id"]] * 4,
        config["vision_end_token_id"],
        *text,
    ]
    patch = config["vision_config"].get("patch_size", 14)  # 16 for Qwen3-VL and Qwen3.5
    pixels = torch.randn(16, 3 * 2 * patch * patch, generator=torch.Generator().manual_seed(5))
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "mm_token_type_ids": (input_ids == config["image_token_id"]).to(torch.int32),
        "pixel_values": pixels,
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }


def trained_vl(model_dir: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The tiny VL model loaded and sharded as the engine does, after one AdamW step that moves every weight."""
    from sophiavl_cli.engine.parallel.fsdp import shard_model
    from sophiavl_cli.models.loading import load_vl_model

    model = load_vl_model(model_dir, dtype=torch.float32)
    shard_model(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    inputs = vl_inputs(model_dir)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    model.eval()
    return model, optimizer


def train_vl_and_save(rank: int, world_size: int, port: int, model_dir: str, step_dir: str, out: str) -> None:
    """Save the trained tiny VL with save_sharded; record its logits and gathered full weights."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from sophiavl_cli.engine.checkpoint.sharded import save_rank_extras, save_sharded

    init_gloo(rank, world_size, port)
    model, optimizer = trained_vl(model_dir)
    save_sharded(Path(step_dir), model, optimizer)
    save_rank_extras(Path(step_dir), rank, {"rank": rank})
    with torch.no_grad():
        logits = model(**vl_inputs(model_dir)).logits
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    weights = {k: v.clone() for k, v in full.items()}
    rank0_save(
        {"logits": logits, "weights": weights, "state": full_state(model, optimizer)},
        Path(out) / "trained.pt",
    )
    finish()


def reload_vl(rank: int, world_size: int, port: int, model_dir: str, step_dir: str, out: str) -> None:
    """A fresh sharded tiny VL + fresh AdamW at this world size, loaded from the checkpoint; record its state."""
    from sophiavl_cli.engine.checkpoint.sharded import load_sharded
    from sophiavl_cli.engine.parallel.fsdp import shard_model
    from sophiavl_cli.models.loading import load_vl_model

    init_gloo(rank, world_size, port)
    model = shard_model(load_vl_model(model_dir, dtype=torch.float32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_sharded(Path(step_dir), model, optimizer)
    rank0_save(full_state(model, optimizer), Path(out) / f"reloaded_vl_ws{world_size}.pt")
    finish()


def save_released_layout(
    rank: int, world_size: int, port: int, model_dir: str, actor_dir: str, out: str
) -> None:
    """Each rank torch.saves its FSDP2 state dict of DTensors, named as the released (hub-format) files."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers.core_model_loading import revert_weight_conversion

    init_gloo(rank, world_size, port)
    model, _ = trained_vl(model_dir)
    renamed = {
        next(iter(revert_weight_conversion(model, {name: torch.empty(0)}))): value
        for name, value in model.state_dict().items()
    }
    torch.save(renamed, Path(actor_dir) / f"model_world_size_{world_size}_rank_{rank}.pt")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    rank0_save({k: v.clone() for k, v in full.items()}, Path(out) / "released_full.pt")
    finish()
