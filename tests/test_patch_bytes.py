"""Image patches cross Ray in the policy's compute dtype, and reach each rank once per step.

Counted at the transport's boundary: the per-rank arguments the driver's `Workers` facade hands
to Ray are serialised the way Ray serialises them (pickle protocol 5, numpy buffers out of band)
and delivered to real `TrainWorker` objects, whose received patches are checked value by value.
The minimum a rank must receive is the patches of the prompts it generates or trains on, each
once, in the compute dtype. A bf16 run of the tiny model on CPU shows the model computes the same
thing from them.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sophiavl_cli.config import load_recipe
from sophiavl_cli.data.loader import load_rows
from sophiavl_cli.engine.prompting import PromptBuilder
from sophiavl_cli.engine.rollout.base import HeldPatches, WirePatches, patches_from_wire
from sophiavl_cli.engine.rollout.images import images_from_patches
from sophiavl_cli.engine.step import shard_sequences
from sophiavl_cli.engine.workers.batching import TrainSequence, spread_across_ranks
from sophiavl_cli.engine.workers.facade import Workers
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.models import VLProcessor, load_vl_model

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


class RayWire:
    """Stands in for `WorkerGroup` at Ray's boundary: serialises each rank's arguments as Ray does and
    delivers them to in-process `TrainWorker`s, counting the out-of-band (numpy) bytes per rank."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        threads = torch.get_num_threads()
        self.workers = [TrainWorker(rank, world_size, {}, threads) for rank in range(world_size)]
        self.bytes = [0] * world_size
        self.received: list[Any] = [None] * world_size

    def run_each(self, method: str, per_rank: list[tuple[Any, ...]]) -> list[Any]:
        results = []
        for rank, args in enumerate(per_rank):
            buffers: list[pickle.PickleBuffer] = []
            payload = pickle.dumps(args, protocol=5, buffer_callback=buffers.append)
            self.bytes[rank] += sum(memoryview(b).nbytes for b in buffers)
            args = pickle.loads(payload, buffers=buffers)
            worker = self.workers[rank]
            if method == "generate":  # the rollout engine would generate from these prompts
                self.received[rank] = worker.receive_prompts(args[0])
                results.append([])
            else:
                results.append(getattr(worker, method)(*args))
        return results


def _step_prompts(tiny_model_dir: Path, dtype: torch.dtype | None) -> tuple[Any, list[Any]]:
    recipe = load_recipe(QUICKSTART, ["data.rollout_batch_size=8", "worker.actor.global_batch_size=8"])
    processor = VLProcessor.from_pretrained(
        tiny_model_dir, min_pixels=recipe.data.min_pixels, max_pixels=recipe.data.max_pixels
    )
    builder = PromptBuilder(processor, recipe.data, patch_dtype=dtype)
    rows = list(load_rows(recipe.data.train_files))[: recipe.data.rollout_batch_size]
    return recipe, builder.build_batch(rows)


@pytest.mark.parametrize("dtype", [torch.bfloat16, None], ids=["bf16", "fp32"])
def test_each_rank_receives_each_prompts_patches_once_in_the_compute_dtype(
    tiny_model_dir: Path, dtype
) -> None:
    recipe, built = _step_prompts(tiny_model_dir, dtype)
    n, world = recipe.worker.rollout.n, recipe.world_size
    prompts = [b.prompt for b in built]
    wire = RayWire(world)
    workers = Workers(wire)  # type: ignore[arg-type]

    assignment = spread_across_ranks([len(p.prompt_ids) for p in prompts], world)
    workers.generate([[prompts[i] for i in rows] for rows in assignment], n, None, 0)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    sequences = [
        TrainSequence(
            index=i,
            prompt_ids=prompts[i // n].prompt_ids,
            response_ids=list(rng.integers(0, 100, int(rng.integers(1, 32)))),
            pixel_values=prompts[i // n].pixel_values,
            image_grid_thw=prompts[i // n].image_grid_thw,
        )
        for i in range(len(prompts) * n)
    ]
    shards = shard_sequences(sequences, recipe, world)
    workers.set_sequences([[sequences[i] for i in shard] for shard in shards], None, None)

    value_bytes = 2 if dtype == torch.bfloat16 else 4
    for rank in range(world):
        needed = {i for i in assignment[rank]} | {sequences[i].index // n for i in shards[rank]}
        needed = {i for i in needed if prompts[i].pixel_values is not None}
        assert needed, "the demo prompts of this step have images"
        minimum = sum(prompts[i].pixel_values.bits.size * value_bytes for i in needed)
        grids = sum(prompts[i].image_grid_thw.nbytes for i in needed) * 2  # the small grids travel too
        assert minimum <= wire.bytes[rank] <= 1.1 * minimum + grids, (rank, wire.bytes[rank], minimum)
        # what the worker computes with: float32 patches equal to the compute-dtype values, held or sent
        got = {s.index: s.pixel_values for s in wire.workers[rank]._sequences}
        for i in shards[rank]:
            if prompts[i // n].pixel_values is None:
                assert got[i] is None
                continue
            expected = patches_from_wire(prompts[i // n].pixel_values)
            assert got[i].dtype == np.float32 and np.array_equal(got[i], expected)
        assert wire.workers[rank]._held_patches == {}
    if dtype == torch.bfloat16:
        held = [s for shard in shards for s in shard if sequences[s].index // n in assignment[0]]
        assert held, "some sequences train on the rank that generated their prompt"


def test_bf16_patches_give_the_bf16_model_the_same_input_and_vllm_the_same_pixels(
    tiny_model_dir: Path,
) -> None:
    _, built = _step_prompts(tiny_model_dir, torch.bfloat16)
    _, built32 = _step_prompts(tiny_model_dir, None)
    first_with_image = next(i for i, b in enumerate(built) if b.prompt.pixel_values is not None)
    prompt, prompt32 = built[first_with_image].prompt, built32[first_with_image].prompt
    wire = prompt.pixel_values
    assert isinstance(wire, WirePatches) and wire.bits.dtype == np.int16 and wire.dtype == "bfloat16"
    fp32 = prompt32.pixel_values.bits
    assert wire.bits.nbytes * 2 == fp32.nbytes
    received = patches_from_wire(wire)
    assert torch.equal(
        torch.from_numpy(received).to(torch.bfloat16), torch.from_numpy(fp32).to(torch.bfloat16)
    )

    # a bf16 model on CPU: the vision tower's output is bit-identical from either
    model = load_vl_model(tiny_model_dir, dtype=torch.bfloat16, device="cpu").eval()
    grid = torch.from_numpy(prompt.image_grid_thw)
    with torch.no_grad():
        from_fp32 = model.model.visual(torch.from_numpy(fp32), grid_thw=grid)
        from_wire = model.model.visual(torch.from_numpy(received), grid_thw=grid)
    first = from_fp32.pooler_output if hasattr(from_fp32, "pooler_output") else from_fp32
    second = from_wire.pooler_output if hasattr(from_wire, "pooler_output") else from_wire
    assert torch.equal(first, second)

    # vLLM's images, rebuilt from the bf16 patches, encode back to the same bf16 values
    processor = VLProcessor.from_pretrained(tiny_model_dir)
    images = images_from_patches(
        received, prompt.image_grid_thw, processor.image_config, rounded_to=torch.bfloat16
    )
    again, _ = processor.preprocess_images(images)
    assert torch.equal(
        torch.from_numpy(again).to(torch.bfloat16), torch.from_numpy(received).to(torch.bfloat16)
    )


def test_held_patches_are_named_only_to_the_rank_that_generated_them(tiny_model_dir: Path) -> None:
    _, built = _step_prompts(tiny_model_dir, torch.bfloat16)
    wire = RayWire(2)
    workers = Workers(wire)  # type: ignore[arg-type]
    a, b = [b.prompt for b in built if b.prompt.pixel_values is not None][:2]
    workers.generate([[a], [b]], 1, None, 0)  # type: ignore[arg-type]
    seq = TrainSequence(
        index=0,
        prompt_ids=a.prompt_ids,
        response_ids=[1],
        pixel_values=a.pixel_values,
        image_grid_thw=a.image_grid_thw,
    )
    sent: list[Any] = []
    wire.run_each = lambda method, per_rank: sent.extend(per_rank) or [None, None]  # type: ignore[method-assign]
    workers.set_sequences([[seq], [seq]], None, None)
    assert isinstance(sent[0][0][0].pixel_values, HeldPatches)  # rank 0 generated prompt a
    assert isinstance(sent[1][0][0].pixel_values, WirePatches)  # rank 1 never got it
    assert workers.held_patches == [set(), set()]
