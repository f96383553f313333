"""Log-probs and entropy upcast one row chunk at a time: extra memory bounded by the chunk, same values.

The accounting is tracemalloc-like for torch's CPU allocator: a dispatch mode adds every new tensor
storage an op creates and subtracts it when the storage is freed, so `peak` is the most memory the
loss held at once beyond its inputs (forward and backward).
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sophiavl_cli.algo.losses import logprobs_and_entropy
from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.workers.objective import ObjectiveConfig, actor_objective

N, V, CHUNK, T = 64, 32768, 8, 0.7  # 64 response positions of a 32k vocabulary


class LiveStorageBytes(TorchDispatchMode):
    """Bytes of tensor storages created under the mode and still alive; `peak` is their maximum."""

    def __init__(self, *inputs: torch.Tensor) -> None:
        super().__init__()
        self.live: dict[int, int] = {t.untyped_storage()._cdata: 0 for t in inputs}  # views of inputs: free
        self.current = self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unchunked formula: two whole float32 copies of the logits and a full softmax."""
    z = logits.float() / T
    log_p = torch.log_softmax(z, dim=-1)
    return log_p.gather(-1, labels[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)


def _peak(fn, logits: torch.Tensor, labels: torch.Tensor) -> int:
    with LiveStorageBytes(logits, labels) as meter:
        logp, entropy = fn(logits, labels)
        (logp.sum() - 1e-3 * entropy.sum()).backward()
    return meter.peak


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(N, V, generator=generator)).to(dtype).requires_grad_(True)
    return logits, torch.randint(0, V, (N,), generator=generator)


def test_the_losss_extra_memory_is_its_gradient_plus_a_few_chunks_not_full_fp32_copies():
    logits, labels = _inputs(torch.bfloat16)
    gradient = N * V * 2  # the logits' gradient (bf16): unavoidable
    chunk = CHUNK * V * 4  # one float32 chunk
    chunked = _peak(lambda x, y: logprobs_and_entropy(x, y, T, chunk_rows=CHUNK), logits, labels)
    assert chunked <= gradient + 4 * chunk
    logits.grad = None
    bigger = _peak(lambda x, y: logprobs_and_entropy(x, y, T, chunk_rows=4 * CHUNK), logits, labels)
    assert bigger > chunked + 3 * chunk  # it grows with the chunk size ...
    logits.grad = None
    reference = _peak(_reference, logits, labels)
    assert reference > gradient + 4 * N * V  # ... while the unchunked formula holds whole fp32 copies
    assert chunked < reference / 3


def test_chunked_values_and_gradients_equal_the_unchunked_reference():
    logits, labels = _inputs(torch.float32)
    weights = torch.randn(N, generator=torch.Generator().manual_seed(1))
    logp, entropy = logprobs_and_entropy(logits, labels, T, chunk_rows=CHUNK)
    (weights * logp + 0.3 * weights.flip(0) * entropy).sum().backward()
    grad, logits.grad = logits.grad, None
    ref_logp, ref_entropy = _reference(logits, labels)
    (weights * ref_logp + 0.3 * weights.flip(0) * ref_entropy).sum().backward()
    torch.testing.assert_close(logp, ref_logp.detach(), rtol=0, atol=1e-5)
    # fp32 sums over 32k terms: the two entropy formulas (lse - sum p z vs -sum p log p) differ by ~1e-4
    torch.testing.assert_close(entropy, ref_entropy.detach(), rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(grad, logits.grad, rtol=1e-4, atol=1e-5)


def test_the_actor_loss_runs_on_the_chunked_path_and_equals_the_unchunked_formula():
    logits, labels = _inputs(torch.float32)
    logits3, tokens = logits.view(4, N // 4, V), labels.view(4, N // 4)
    mask = torch.ones(4, N // 4)
    mask[0, -3:] = 0
    cfg = ObjectiveConfig.from_recipe(load_recipe(None, ["worker.rollout.temperature=0.7"]), use_kl=False)
    with torch.no_grad():
        ref_logp, ref_entropy = _reference(logits, labels)
    old = ref_logp.view(4, -1) + 0.01
    loss, metrics = actor_objective(
        cfg, logits3, tokens, mask, old, None, torch.tensor([1.0, -1.0, 0.5, 0.0])
    )
    loss.backward()
    expected = (ref_entropy.view(4, -1) * mask).sum() / mask.sum()
    assert abs(metrics["entropy"] - float(expected)) < 2e-4 * float(expected)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
