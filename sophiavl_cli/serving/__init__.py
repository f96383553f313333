"""Reward-model serving: the built-in OpenAI-compatible server and the vLLM server launcher.

- `hf_server`: FastAPI + uvicorn over transformers generate (CPU, development, embedded default);
- `vllm_server`: vLLM's own OpenAI server as a child process (GPU, the released 3B RM);
- `launcher.start_reward_server`: either one on a free loopback port, for the length of a run.

Nothing heavy is imported here: `import sophiavl_cli.serving` must stay cheap.
"""
