"""The one generation layer: how sophiavl asks a model for tokens, whoever is asking.

- `sampling`: `SamplingParams`, the sampling every caller states in full.
- `tokens`: the stop (end-of-turn) ids and the pad id of a model folder.
- `hf`: `HFGenerator`, transformers `generate` with every sampling field explicit, and the
  left-padded model inputs it takes.
- `vllm`: the offline vLLM engine (its arguments, the CPU KV-cache size, `SamplingParams`
  translated for vLLM) and `VLLMGenerator` over it.

`infer`, `eval`, the built-in reward server and the hf / vllm rollouts call these; none of them
wraps `generate`, finds stop ids or builds vLLM arguments on its own.
"""
