"""The `reward` section: the thinking reward model's endpoint (URL, served actor, built-in server), its client
settings and failure policy, and DAPO's overlong penalty.

These keys change with `rewards/` and `engine/reward_model/`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sophiavl_cli.config.fields import EnvVarName, Section


class RMServeConfig(Section):
    model: str = Field(
        ...,
        description="Reward model to serve for the run: folder, merged checkpoint, alias, hub id or builtin:*.",
    )
    backend: Literal["hf", "vllm"] = Field(
        "vllm", description="vllm (GPU) or hf (transformers generate; CPU and development)."
    )
    gpus: int = Field(
        1,
        ge=0,
        description="GPUs the reward model's Ray actor reserves, beside the training workers' (0 on CPU).",
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="vLLM tensor-parallel size; must equal gpus with the vllm backend."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM share of its GPUs' memory.")
    max_model_len: int | None = Field(
        None,
        gt=0,
        description="vLLM's context for one reward-model request (question, image tokens, the policy's "
        "response, the reply); unset: the model's own (Qwen2.5-VL: 128k tokens), which vLLM must fit "
        "one whole sequence of in its KV cache. Longer requests are refused and count as RM failures.",
    )
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Serving dtype.")
    max_new_tokens: int = Field(64, gt=0, description="Most tokens per reply.")
    max_restarts: int = Field(
        1,
        ge=0,
        description="Restarts after the served model dies (counted in rm/serve_restarts); then calls fail.",
    )
    health_interval: float = Field(
        2.0, gt=0, description="Seconds between health checks of the served model."
    )

    @model_validator(mode="after")
    def _tensor_parallel_fits(self) -> RMServeConfig:
        if self.backend == "vllm" and self.tensor_parallel_size != max(self.gpus, 1):
            raise ValueError(
                f"reward.thinking.serve.tensor_parallel_size ({self.tensor_parallel_size}) must equal "
                f"reward.thinking.serve.gpus ({self.gpus}) with the vllm backend"
            )
        return self


class ThinkingRewardConfig(Section):
    url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (base URL or .../chat/completions); default $OPENAI_API_URL; "
        "with neither, serve (a Ray actor) or serve_model (a built-in server) serves one for the run.",
    )
    model: str | None = Field(None, description="Served reward-model name; default $REWARD_MODEL.")
    api_key_env: EnvVarName = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never saved)."
    )
    serve_model: str | None = Field(
        None,
        description="Model a built-in reward server loads for the run when no url (nor $OPENAI_API_URL) is "
        "configured; unset, such a run stops before it starts.",
    )
    serve: RMServeConfig | None = Field(
        None,
        description="Serve this reward model as a Ray actor on its own GPUs for the run (health-checked, "
        "restarted on failure); a url or $OPENAI_API_URL still wins.",
    )
    concurrency: int = Field(64, gt=0, description="Requests in flight at once.")
    timeout: float = Field(60.0, gt=0, description="Seconds per request before it is retried.")
    max_retries: int = Field(
        5, ge=0, description="Retries on connection errors, 429 and 5xx; a timeout is retried once at most."
    )
    constrained: bool = Field(
        True, description="Ask the server to answer with one of the eleven scores when it can."
    )
    max_failure_fraction: float = Field(
        0.5, ge=0, le=1, description="Stop training when more than this share of RM calls fail ..."
    )
    min_coverage: float = Field(
        0.5,
        ge=0,
        le=1,
        description="... or when fewer than this share of groups used the thinking reward (the rest fell back "
        "to outcome-only after an RM failure); 0 turns this floor off.",
    )
    failure_patience: int = Field(3, gt=0, description="... for this many consecutive steps.")

    @model_validator(mode="after")
    def _one_way_to_serve(self) -> ThinkingRewardConfig:
        if self.serve is not None and self.serve_model:
            raise ValueError(
                "reward.thinking.serve and reward.thinking.serve_model both serve a reward model for the run; "
                "keep one (serve: a Ray actor on its own GPUs; serve_model: a built-in hf server on the driver)"
            )
        return self


class OverlongConfig(Section):
    enable: bool = Field(False, description="DAPO's soft over-length penalty on the final reward.")
    buffer_length: int = Field(
        256,
        gt=0,
        description="L_cache: the penalty falls linearly from 0 to -penalty_factor over the last this many "
        "tokens before data.max_response_length.",
    )
    penalty_factor: float = Field(1.0, ge=0, description="Size of the penalty at the length cap.")


class RewardConfig(Section):
    format_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the outcome reward given to format alone (0 = format is a gate, as released).",
    )
    custom: dict[str, str] = Field(
        default_factory=dict,
        description="problem_type -> 'path/to/file.py:function' for extra question types.",
    )
    format_gate: bool = Field(
        True,
        description="false scores the <answer> content (or the whole response) without requiring the <think>/<answer> format; for custom rewards and smoke tests.",
    )
    thinking: ThinkingRewardConfig = Field(
        default_factory=ThinkingRewardConfig, description="Thinking reward model client."
    )
    overlong: OverlongConfig = Field(
        default_factory=OverlongConfig, description="DAPO overlong reward shaping."
    )
