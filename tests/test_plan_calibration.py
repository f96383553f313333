"""The planner against the real thing on CPU: exact parameter, gradient and AdamW bytes; saved activations.

Every family is checked on its built-in tiny model (`tests/model_families.py`).

- Parameter counts equal `sum(p.numel())` of transformers' model built from the same config, for
  those models and every architecture the planner ships numbers for (meta device: no memory); the
  decoder's active matmul weights equal the MFU counter's reading of the transformers config.
- LoRA's adapter size equals what peft injects, on every family (fused experts are not adapted).
- A real `TrainWorker` (world of one, gloo) holds exactly the shard, gradient and AdamW bytes the
  planner says, in mixed precision, pure bf16 and LoRA.
- What autograd saves in a training forward + loss (counted with `saved_tensors_hooks`, parameters
  excluded, each storage once) is within 15% of the planner's activation term, with and without
  gradient checkpointing, text-only and with images, at several batch shapes.
"""

from __future__ import annotations

import functools
import json

import model_families
import numpy as np
import pytest
import torch
import transformers
from torch.distributed.tensor import DTensor
from worker_fixtures import cpu_worker_spec

from sophiavl_cli.algo.losses import logprobs_and_entropy
from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.observe.throughput import FlopsModel
from sophiavl_cli.engine.workers.batching import TrainSequence, micro_batches
from sophiavl_cli.engine.workers.forward import ResponseForward, response_tokens
from sophiavl_cli.engine.workers.lora import apply_lora
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.models import resolve_model
from sophiavl_cli.models.loading import load_vl_model
from sophiavl_cli.plan import architecture_of
from sophiavl_cli.plan.activations import MicroBatch, saved_activation_bytes
from sophiavl_cli.plan.architecture import Architecture
from sophiavl_cli.plan.known import KNOWN_CONFIGS
from sophiavl_cli.plan.memory import lora_params, rank_states

CPU = torch.device("cpu")


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def _tiny_model(name: str) -> tuple[torch.nn.Module, dict, Architecture]:
    """(fp32 model on CPU with sdpa attention, its config.json, the planner's architecture)."""
    folder = resolve_model(f"builtin:{name}")
    model = load_vl_model(folder, dtype=torch.float32, device="cpu", attn_device=CPU)
    return model, json.loads((folder / "config.json").read_text()), architecture_of(f"builtin:{name}")


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("repo", sorted(KNOWN_CONFIGS))
def test_shipped_architectures_count_exactly_the_parameters_transformers_builds(repo: str) -> None:
    config = transformers.AutoConfig.for_model(**json.loads(json.dumps(KNOWN_CONFIGS[repo])))
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(config)
    arch = architecture_of(repo)
    assert arch.params == sum(p.numel() for p in model.parameters())  # every expert: all are resident
    assert arch.vision.params == sum(p.numel() for p in model.model.visual.parameters())
    blocks = [m for m in model.modules() if type(m).__name__ in model._no_split_modules]
    assert arch.root_params == arch.params - sum(p.numel() for b in blocks for p in b.parameters())
    # the FLOPs side reads the same config the same way: MoE counts only the routed top-k
    assert arch.text.flops == FlopsModel.from_config(config)


@pytest.mark.parametrize("name", model_families.ALL)
def test_tiny_models_of_every_family_count_exactly_their_parameters(name: str) -> None:
    model, _, arch = _tiny_model(name)
    assert arch.params == sum(p.numel() for p in model.parameters())
    assert arch.vision.params == sum(p.numel() for p in model.model.visual.parameters())
    assert arch.text.largest_layer_params == max(
        sum(p.numel() for p in layer.parameters()) for layer in model.model.language_model.layers
    )


@pytest.mark.parametrize("name", model_families.ALL)
def test_lora_adapters_are_the_size_peft_injects(name: str) -> None:
    model, _, arch = _tiny_model(name)
    targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "in_proj_qkv",
        "out_proj",
    ]
    assert apply_lora(model, rank=4, alpha=8, dropout=0.0, targets=targets) == lora_params(
        arch.text, 4, targets
    )


# --------------------------------------------------------------------------- states on a real worker


def _worker_state_bytes(model_dir, overrides: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(measured, planned) bytes of policy shards, gradients and AdamW buffers on a world of one."""
    torch.set_num_threads(1)
    recipe = load_recipe(
        None,
        [
            "trainer.n_workers_per_node=1",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=2",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.gradient_checkpointing=false",
            "algorithm.kl_coef=0",
            *overrides,
        ],
    )
    worker = TrainWorker(0, 1, {}, 1)
    worker.setup(cpu_worker_spec(recipe, model_dir))
    try:
        grads: dict[str, int] = {}
        real_step = worker.optimizer.step

        def record_then_step(*args, **kwargs):  # gradients exist only inside the update
            grads["bytes"] = sum(
                _local_bytes(p.grad) for p in worker.policy.parameters() if p.grad is not None
            )
            return real_step(*args, **kwargs)

        worker.optimizer.step = record_then_step  # type: ignore[method-assign]
        worker.set_sequences([TrainSequence(i, [5, 6, 7, 8], [10, 11, 12 + i], None, None) for i in range(2)])
        worker.compute_old_logprobs()
        worker.update([1.0, -1.0], num_updates=1)
        moments = [
            value
            for state in worker.optimizer.state.values()
            for key, value in state.items()
            if key != "step" and isinstance(value, torch.Tensor)
        ]
        measured = {
            "policy": sum(_local_bytes(p) for p in worker.policy.parameters()),
            "grads": grads["bytes"],
            "optimizer": sum(_local_bytes(m) for m in moments),
        }
    finally:
        worker.shutdown()
    states = rank_states(recipe, architecture_of(str(model_dir)))
    return measured, {"policy": states.policy, "grads": states.grads, "optimizer": states.optimizer}


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["worker.actor.master_dtype=bf16"],
        ["worker.actor.lora.rank=4"],
        ["worker.actor.freeze_vision_tower=true"],
    ],
    ids=["mixed", "pure-bf16", "lora", "frozen-vision"],
)
def test_shard_gradient_and_adamw_bytes_equal_the_plan(tiny_model_dir, overrides: list[str]) -> None:
    measured, planned = _worker_state_bytes(tiny_model_dir, overrides)
    assert measured == planned


# --------------------------------------------------------------------------- activations


@pytest.fixture
def one_thread():
    """Tiny forwards on one thread: on a loaded machine torch's thread pool spins for longer than they run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _training_model(name: str, checkpointed: bool) -> tuple[torch.nn.Module, dict, Architecture]:
    """One model per family and checkpointing setting for all batch shapes (a forward changes no weight)."""
    torch.manual_seed(0)
    model, config, arch = _tiny_model(name)
    model.train()
    if checkpointed:  # as the worker enables it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, config, arch


def _saved_bytes(model: torch.nn.Module, mb, temperature: float = 1.0) -> int:
    """Bytes of every storage autograd saves in a forward + the loss's log-probs, parameters excluded."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = ResponseForward(model.config, CPU).logits(model, mb)
        logprobs_and_entropy(logits, response_tokens(mb, CPU), temperature)
    return sum(seen.values())


def _sequences(
    config: dict, rows: int, prompt: int, response: int, side: int, patch_dim: int
) -> list[TrainSequence]:
    """Rows of unequal length (so the batch is padded, as in training), each with one side x side-patch image."""
    out = []
    for i in range(rows):
        reply = list(range(10, 10 + response - i % 3))
        if side:
            tokens = side * side // 4
            pixels = np.random.default_rng(i).standard_normal((side * side, patch_dim)).astype(np.float32)
            ids = [5] * (prompt - tokens - i) + [config["image_token_id"]] * tokens
            out.append(TrainSequence(i, ids, reply, pixels, np.asarray([[1, side, side]], dtype=np.int64)))
        else:
            out.append(TrainSequence(i, list(range(5, 5 + prompt - i)), reply, None, None))
    return out


@pytest.mark.parametrize("name", model_families.ALL)
@pytest.mark.parametrize("checkpointed", [False, True], ids=["full", "checkpointed"])
@pytest.mark.parametrize(
    "rows,prompt,response,side",
    [(2, 20, 12, 0), (4, 40, 24, 0), (1, 64, 8, 0), (2, 40, 12, 8), (3, 60, 16, 12)],
    ids=["text-2x32", "text-4x64", "text-1x72", "image-2x52", "image-3x76"],
)
def test_saved_activations_are_within_15_percent_of_the_plan(
    one_thread, name: str, checkpointed: bool, rows: int, prompt: int, response: int, side: int
) -> None:
    """Rows of 32 to 76 tokens: one and two chunks of the Gated DeltaNet's 64-token chunked rule."""
    model, config, arch = _training_model(name, checkpointed)
    mb = micro_batches(_sequences(config, rows, prompt, response, side, arch.vision.patch_dim), rows, 0)[0]
    measured = _saved_bytes(model, mb)
    pixels = side * side * arch.vision.patch_size**2
    shape = MicroBatch(rows, mb.input_ids.shape[1], mb.response_mask.shape[1], rows if side else 0, pixels)
    planned = saved_activation_bytes(arch, shape, 4, checkpointed)
    assert planned == pytest.approx(measured, rel=0.15)
