"""AdamW for bf16 weights (`worker.actor.master_dtype=bf16`): bf16 state, fp32 arithmetic, Kahan-compensated.

Pure bf16 keeps the weights, their gradients and AdamW's two moments in bf16: 2 + 2 + 4 bytes a
parameter instead of mixed precision's 4 + 4 + 8. A bf16 weight holds 8 significant bits, so an
update smaller than half its spacing (about 0.2% of the weight) rounds away: at SophiaVL-R1's
learning rate of 6e-7 plain bf16 AdamW would leave most weights unchanged. As EasyR1's `adamw_bf16`
(llama-cookbook's AnyPrecisionAdamW) does, each weight carries a bf16 compensation buffer holding
what rounding dropped, added back on the next step (Kahan summation): small updates accumulate
instead of vanishing, for 2 more bytes a parameter (10 in all).

Every step computes in fp32 from the bf16 state, on the local shard of each FSDP2 parameter
(`DTensor.to_local()`; the state tensors are DTensors like the parameter, so DCP saves and reshards
them as it does torch's AdamW state). Weight decay is decoupled as in `torch.optim.AdamW`.
torch-optimi's `AdamW(kahan_sum=True)` does the same, but its default Triton kernels take plain
tensors, not FSDP2's DTensors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor

STATE_KEYS = ("exp_avg", "exp_avg_sq", "compensation")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class KahanAdamW(torch.optim.Optimizer):
    """AdamW over low-precision parameters with low-precision state and Kahan-compensated updates."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    for key in STATE_KEYS:
                        state[key] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                weight, grad = _local(param), _local(param.grad).float()
                exp_avg, exp_avg_sq, compensation = (_local(state[key]) for key in STATE_KEYS)
                m = exp_avg.float().mul_(beta1).add_(grad, alpha=1 - beta1)
                v = exp_avg_sq.float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                exp_avg.copy_(m)
                exp_avg_sq.copy_(v)
                denom = v.div_(1 - beta2**step).sqrt_().add_(eps)
                old = weight.float()
                update = m.div_(denom).mul_(-lr / (1 - beta1**step))
                update.add_(old, alpha=-lr * decay).add_(compensation.float())
                weight.copy_(old + update)  # rounds to the parameter's dtype
                compensation.copy_(update.sub_(weight.float() - old))  # what the rounding dropped
