"""The reward-model SFT worker: one Ray actor per rank holding the FSDP2 model and its AdamW.

A `TrainWorker` without rollout engine or reference model: it keeps the parent's process-group
rendezvous, `describe`, checkpoint save/load (the same DCP layout, so `sophiavl merge` reads it) and
shutdown, and adds two collective RPCs: `sft_step` (cross-entropy on the target tokens, gradient
accumulation over micro-batches, clip, AdamW, LR schedule) and `response_logprobs` (per-token target
log-probs, for the held-out evaluation). `RMWorkers` is the driver's typed facade over them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sophiavl_cli.algo.losses import token_logprobs
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.parallel import fsdp
from sophiavl_cli.engine.parallel.offload import Offload
from sophiavl_cli.engine.workers import build
from sophiavl_cli.engine.workers.batching import TrainSequence, micro_batches
from sophiavl_cli.engine.workers.facade import CommonWorkers
from sophiavl_cli.engine.workers.forward import response_tokens
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.metrics.keys import (
    SFT_GRAD_NORM,
    SFT_LOSS,
    SFT_LR,
    SFT_SKIPPED,
    SFT_TARGET_TOKENS,
    SFT_TOKEN_ACCURACY,
    SFT_TOKENS,
)


@dataclass(frozen=True)
class RMWorkerSpec:
    """Everything an RM worker needs to build itself (sent once, plain and picklable)."""

    recipe: RMRecipe
    model_dir: str
    master_addr: str
    master_port: int
    device: str
    optimizer_steps_total: int
    pad_token_id: int
    collective_timeout_s: float


class RMWorker(TrainWorker):
    """One rank of `sophiavl train-rm`."""

    def setup(self, spec: RMWorkerSpec) -> dict[str, float]:  # type: ignore[override]
        """Join the process group, load and shard the model, build AdamW."""
        start = time.perf_counter()
        self._join(spec)
        model = spec.recipe.model
        self.policy = build.load_trainable(
            spec.model_dir,
            self.device,
            build.compute_dtype(spec.device, model.dtype),
            gradient_checkpointing=model.gradient_checkpointing,
            freeze_vision_tower=model.freeze_vision_tower,
        )
        self.offload = Offload(
            self.device, params=False, optimizer=False, ref=False
        )  # the parent's checkpoints use it
        self.optimizer = build.build_optimizer(self.policy, model.optim)
        self.forward = build.response_forward(self.policy, self.device, model.padding_free)
        dist.barrier()
        return {"setup_s": time.perf_counter() - start}

    @property
    def _adapter_only(self) -> bool:
        """The reward model is fully fine-tuned: its checkpoints hold every parameter."""
        return False

    def sync_weights(self) -> float:
        """No rollout copy to refresh (called by the parent's `load_checkpoint`)."""
        return 0.0

    def sft_step(self, sequences: list[TrainSequence], total_target_tokens: int) -> dict[str, float]:
        """One optimizer step on this rank's rows: token-mean NLL over the whole step's target tokens.

        Each micro-batch's summed NLL is divided by the step's target tokens over all ranks and
        multiplied by the world size (FSDP2 averages gradients over ranks), so the gradient is
        that of the global token mean whatever the micro-batch split.
        """
        model = self.recipe.model  # type: ignore[attr-defined]
        self.policy.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # nll, correct, tokens
        nonfinite = False
        for mb in micro_batches(sequences, model.micro_batch_size_per_device, self.spec.pad_token_id):
            logits = self.forward.logits(self.policy, mb)  # [B, R, V]
            tokens = response_tokens(mb, self.device)  # [B, R]
            mask = torch.tensor(mb.response_mask, device=self.device)  # [B, R]
            nll = -(token_logprobs(logits, tokens, 1.0) * mask).sum()
            loss = nll * self.world_size / total_target_tokens
            nonfinite |= not bool(torch.isfinite(loss.detach()))
            loss.backward()
            correct = ((logits.detach().argmax(dim=-1) == tokens).float() * mask).sum()
            totals += torch.stack([nll.detach(), correct, mask.sum()]).double()
        grad_norm, lr, skipped = self._apply_gradients(nonfinite, model.optim, model.max_grad_norm)
        dist.all_reduce(totals)
        nll_sum, correct, count = (float(v) for v in totals.tolist())
        return {
            SFT_LOSS: nll_sum / max(count, 1.0),
            SFT_TOKEN_ACCURACY: correct / max(count, 1.0),
            SFT_TARGET_TOKENS: float(sum(len(s.response_ids) for s in sequences)),
            SFT_TOKENS: float(sum(s.num_tokens for s in sequences)),
            SFT_GRAD_NORM: grad_norm,
            SFT_LR: lr,
            SFT_SKIPPED: float(skipped),
        }

    @torch.no_grad()
    def response_logprobs(self, sequences: list[TrainSequence]) -> dict[int, list[float]]:
        """Per-token log-probs of each sequence's response (collective: every rank the same count)."""
        size = self.recipe.model.micro_batch_size_per_device  # type: ignore[attr-defined]
        self.policy.eval()
        out: dict[int, list[float]] = {}
        for mb in micro_batches(sequences, size, self.spec.pad_token_id):
            logits = self.forward.logits(self.policy, mb)  # [B, R, V]
            logp = token_logprobs(logits, response_tokens(mb, self.device), 1.0).cpu().numpy()  # [B, R]
            lengths = mb.response_mask.sum(axis=1).astype(int)
            for row, index in enumerate(mb.indices):
                out[index] = logp[row, : lengths[row]].astype(float).tolist()
        self.policy.train()
        fsdp.reshard_after_no_grad(self.policy)
        return out


class RMWorkers(CommonWorkers):
    """The driver's typed view of the RM workers (methods named through the class, as `Workers`)."""

    def setup(self, spec: RMWorkerSpec) -> list[dict[str, float]]:
        return self.group.run(RMWorker.setup.__name__, spec)

    def sft_step(
        self, per_rank: Sequence[list[TrainSequence]], total_target_tokens: int
    ) -> list[dict[str, float]]:
        args = [(sequences, total_target_tokens) for sequences in per_rank]
        return self.group.run_each(RMWorker.sft_step.__name__, args)

    def response_logprobs(self, per_rank: Sequence[list[TrainSequence]]) -> dict[int, list[float]]:
        results = self.group.run_each(RMWorker.response_logprobs.__name__, [(s,) for s in per_rank])
        return {index: value for result in results for index, value in result.items()}


def split_evenly(
    sequences: Sequence[TrainSequence], world_size: int, multiple: int
) -> list[list[TrainSequence]]:
    """Round-robin over ranks, each padded (with copies indexed -1, -2, ...) to the same length.

    Every rank must run the same number of micro-batches (FSDP2 collectives); the copies' results
    are dropped by the caller (negative indices).
    """
    per_rank = [list(sequences[r::world_size]) for r in range(world_size)]
    longest = max(len(s) for s in per_rank)
    longest = -(-max(longest, 1) // multiple) * multiple
    filler = 0
    for rank_sequences in per_rank:
        while len(rank_sequences) < longest:
            filler -= 1
            template = sequences[0]
            rank_sequences.append(
                TrainSequence(
                    index=filler,
                    prompt_ids=template.prompt_ids,
                    response_ids=template.response_ids,
                    pixel_values=template.pixel_values,
                    image_grid_thw=template.image_grid_thw,
                )
            )
    return per_rank
