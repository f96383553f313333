"""Every metric key sophiavl logs, defined once with its reduction, unit and meaning.

Add a metric with one line in the section it belongs to: `NAME = define("ns/name", reduction,
"Meaning.", "unit")`; code that emits it imports the constant (a typo fails at import).
"""

from __future__ import annotations

from sophiavl_cli.metrics.registry import define

# ----------------------------------------------------------------------------- rewards
REWARD_OUTCOME = define(
    "reward/outcome", "mean", "Rule-based outcome reward (format-gated answer score) per rollout.", "[0, 1]"
)
REWARD_FORMAT = define(
    "reward/format",
    "mean",
    "Share of rollouts passing the format gate (`<think>...</think>` then `<answer>...</answer>`).",
    "fraction",
)
REWARD_ACCURACY = define(
    "reward/accuracy", "mean", "Answer score per rollout, 0 when the format gate fails.", "[0, 1]"
)
REWARD_THINKING = define(
    "reward/thinking", "mean", "Thinking reward model score, over the rollouts it scored.", "[0, 1]"
)
REWARD_FINAL = define(
    "reward/final",
    "mean",
    "Reward used for advantages: outcome + gamma * weight * thinking (+ the overlong penalty when on).",
    "[0, 1 + alpha]",
)
REWARD_OVERLONG_PENALTY = define(
    "reward/overlong_penalty",
    "mean",
    "DAPO soft over-length penalty added to the final reward, mean over rollouts (reward.overlong).",
    "[-factor, 0]",
)
REWARD_OVERLONG_SHARE = define(
    "reward/overlong_share",
    "mean",
    "Share of rollouts whose length reached the overlong buffer (penalty < 0).",
    "fraction",
)

# ----------------------------------------------------------------------------- dynamic sampling
SAMPLING_ROUNDS = define(
    "sampling/rounds",
    "sum",
    "Generation rounds of the step under algorithm.dynamic_sampling (1 = no refill needed).",
    "rounds",
)
SAMPLING_DROPPED_GROUPS = define(
    "sampling/dropped_groups",
    "sum",
    "Groups whose final rewards were all equal, dropped by dynamic sampling this step.",
    "groups",
)
SAMPLING_TOPPED_UP_GROUPS = define(
    "sampling/topped_up_groups",
    "sum",
    "Dropped groups put back to fill the batch because max_extra_rounds was reached.",
    "groups",
)

# ----------------------------------------------------------------------------- Trust-GRPO
TRUST_GAMMA = define(
    "trust/gamma", "mean", "Applied trust weight gamma, mean over groups with thinking rewards.", "(0, 1]"
)
TRUST_DISTRUSTED_FRACTION = define(
    "trust/distrusted_fraction",
    "mean",
    "Share of those groups with gamma < 1 (correct rollouts' thinking scored below wrong ones').",
    "fraction",
)
TRUST_MU_CORRECT = define(
    "trust/mu_correct", "mean", "Mean thinking reward of correct rollouts (outcome >= 0.5).", "[0, 1]"
)
TRUST_MU_WRONG = define(
    "trust/mu_wrong", "mean", "Mean thinking reward of incorrect rollouts (outcome < 0.5).", "[0, 1]"
)
TRUST_WEIGHT = define(
    "trust/weight", "last", "Annealed thinking-reward weight alpha * exp(-step / T).", "[0, alpha]"
)
TRUST_FALLBACK_GROUPS = define(
    "trust/fallback_groups",
    "sum",
    "Groups trained on outcome rewards only because their reward-model call failed.",
    "groups",
)
TRUST_THINKING_COVERAGE = define(
    "trust/thinking_coverage",
    "mean",
    "Share of groups that used the thinking reward (not fallen back to outcome-only after an RM failure); "
    "below reward.thinking.min_coverage for failure_patience steps stops the run.",
    "fraction",
)

# ----------------------------------------------------------------------------- reward model calls
RM_CALLS = define("rm/calls", "sum", "Thinking reward model requests finished (scored or failed).", "calls")
RM_FAILURES = define("rm/failures", "sum", "Requests that failed after their retries (all kinds).", "calls")
RM_FAILURES_FAMILY = define(
    "rm/failures/<kind>", "sum", "Failed requests of one kind (timeout, http_5xx, unparseable...).", "calls"
)
RM_RETRIES = define(
    "rm/retries", "sum", "Retries sent after timeouts, connection errors, 429 and 5xx.", "retries"
)
RM_LATENCY_P50 = define(
    "rm/latency_p50",
    "last",
    "Median time from a request's first attempt to its result over the step (retries included).",
    "s",
)
RM_LATENCY_P95 = define(
    "rm/latency_p95", "last", "95th percentile of the same request times over the step.", "s"
)


# ----------------------------------------------------------------------------- advantages
ADV_ABS_MEAN = define(
    "adv/abs_mean", "mean", "Mean |advantage| over rollouts (0 when every group's rewards tie).", "adv"
)
ADV_ZERO_FRACTION = define(
    "adv/zero_fraction",
    "mean",
    "Share of rollouts with advantage 0: their group's rewards were all equal, so no learning signal "
    "(under grpo_passk also every rollout but each group's best).",
    "fraction",
)

# ----------------------------------------------------------------------------- actor update
ACTOR_LOSS = define(
    "actor/loss", "mean", "Total actor loss: pg_loss + kl_coef * kl - entropy_coef * entropy.", "loss"
)
ACTOR_PG_LOSS = define(
    "actor/pg_loss",
    "mean",
    "Policy loss (worker.actor.policy_loss), aggregated over the mini-batch by worker.actor.loss_agg_mode; "
    "under cispo -A w logp, whose gradient, not value, is the objective's.",
    "loss",
)
ACTOR_KL = define(
    "actor/kl", "mean", "KL(policy || reference) estimate used in the loss (k3 for low_var_kl).", "nats"
)
ACTOR_ENTROPY = define(
    "actor/entropy", "mean", "Entropy of the policy's temperature-scaled token distribution.", "nats"
)
ACTOR_CLIP_FRACTION = define(
    "actor/clip_fraction",
    "mean",
    "Share of response tokens whose ratio (token or sequence ratio under gspo) was clipped; under cispo "
    "whose weight was (the token keeps its gradient); not logged under sapo, which clips nothing.",
    "fraction",
)
ACTOR_CLIP_FRACTION_DUAL = define(
    "actor/clip_fraction_dual",
    "mean",
    "Share of response tokens capped by the dual clip (advantage < 0, ratio > clip_ratio_dual).",
    "fraction",
)
ACTOR_APPROX_KL = define(
    "actor/approx_kl", "mean", "k3 estimate of KL(old policy || current policy) on the update.", "nats"
)
ACTOR_GRAD_NORM = define(
    "actor/grad_norm", "mean", "Global gradient norm before clipping, mean over optimizer steps.", "norm"
)
ACTOR_LR = define(
    "actor/lr", "last", "Learning rate of the last optimizer step (after warm-up / schedule).", "lr"
)
ACTOR_SKIPPED = define(
    "actor/skipped",
    "max",
    "1 when an optimizer step was skipped because the loss or gradient was NaN/inf.",
    "flag",
)

# ----------------------------------------------------------------------------- rollouts
RESPONSE_LENGTH_MEAN = define(
    "response/length_mean", "mean", "Mean response length over the step's rollouts.", "tokens"
)
RESPONSE_LENGTH_MAX = define("response/length_max", "max", "Longest response of the step.", "tokens")
RESPONSE_CLIP_RATIO = define(
    "response/clip_ratio",
    "mean",
    "Share of responses cut at data.max_response_length instead of ending with EOS.",
    "fraction",
)

# ----------------------------------------------------------------------------- time and throughput
TIMING_GEN = define("timing/gen", "sum", "Rollout generation on the workers, prompts encoding included.", "s")
TIMING_REWARD = define(
    "timing/reward", "sum", "Outcome scoring plus waiting for thinking-RM results not yet back.", "s"
)
TIMING_OLD = define("timing/old", "sum", "Old-policy log-prob pass (overlaps the thinking-RM calls).", "s")
TIMING_REF = define(
    "timing/ref", "sum", "Reference-model log-prob pass; absent when the KL term is off.", "s"
)
TIMING_ADV = define("timing/adv", "sum", "Trust-GRPO rewards and group advantages on the driver.", "s")
TIMING_UPDATE = define(
    "timing/update", "sum", "Actor update: forward, backward, clip, AdamW on every rank.", "s"
)
TIMING_SYNC = define("timing/sync", "sum", "Weight sync from the FSDP2 policy to the rollout engines.", "s")
TIMING_STEP = define(
    "timing/step", "sum", "Whole training step, validation and checkpoint saving excluded.", "s"
)
TIMING_SHARD = define(
    "timing/shard", "sum", "Spreading sequences over ranks and planning micro-batches (driver).", "s"
)
TIMING_VAL = define("timing/val", "sum", "Validation run after this step.", "s")
TIMING_SAVE = define(
    "timing/save", "sum", "Checkpoint saved after this step (all ranks' shards + HF copy).", "s"
)
PERF_TOKENS = define("perf/tokens", "sum", "Prompt + response tokens trained on this step.", "tokens")
PERF_RESPONSE_TOKENS = define("perf/response_tokens", "sum", "Response tokens generated this step.", "tokens")
PERF_UPDATE_TOKENS = define(
    "perf/update_tokens",
    "sum",
    "Tokens the update's forward + backward passes ran over: perf/tokens x worker.actor.ppo_epochs.",
    "tokens",
)
PERF_UPDATE_FLOPS = define(
    "perf/update_flops",
    "sum",
    "Model FLOPs of the update (3 x forward: 2 x matmul weights + attention, per token; no recompute).",
    "FLOP",
)
PERF_TOKENS_PER_S = define("perf/tokens_per_s", "last", "perf/tokens / timing/step.", "tokens/s")
PERF_TOKENS_PER_S_PER_WORKER = define(
    "perf/tokens_per_s_per_worker",
    "last",
    "perf/tokens / timing/step / world size: the whole step's tokens/s per GPU (EasyR1's figure).",
    "tokens/s",
)
PERF_GEN_TOKENS_PER_S = define(
    "perf/gen_tokens_per_s", "last", "perf/response_tokens / timing/gen.", "tokens/s"
)
PERF_GEN_TOKENS_PER_S_PER_WORKER = define(
    "perf/gen_tokens_per_s_per_worker", "last", "perf/gen_tokens_per_s / world size.", "tokens/s"
)
PERF_UPDATE_TOKENS_PER_S_PER_WORKER = define(
    "perf/update_tokens_per_s_per_worker",
    "last",
    "perf/update_tokens / timing/update / world size: trained tokens/s per GPU.",
    "tokens/s",
)
PERF_MFU = define(
    "perf/mfu",
    "last",
    "Model FLOPs utilisation of the update: perf/update_flops / (timing/update x world size x peak "
    "bf16 FLOP/s). Logged when the GPU is known (H100/H200/H800/A100/A800) or SOPHIAVL_PEAK_FLOPS is set.",
    "fraction",
)
TRAIN_EPOCH = define(
    "train/epoch", "last", "Epoch of the training data the step drew from (0-based).", "epoch"
)

# ----------------------------------------------------------------------------- validation
VAL_OUTCOME = define("val/outcome", "mean", "Mean outcome reward of greedy validation generations.", "[0, 1]")
VAL_FORMAT = define(
    "val/format", "mean", "Share of validation generations passing the format gate.", "fraction"
)
VAL_OUTCOME_FAMILY = define(
    "val/outcome/<problem_type>", "mean", "val/outcome for one problem type (spaces as _).", "[0, 1]"
)

VAL_RM_MAE = define(
    "val/rm_mae",
    "last",
    "Reward-model SFT: mean absolute error of the predicted score on the held-out rows.",
    "[0, 1]",
)
VAL_RM_WITHIN = define(
    "val/rm_within_0.1",
    "last",
    "Reward-model SFT: share of held-out rows whose predicted score is within 0.1 of the label.",
    "fraction",
)
VAL_RM_SPEARMAN = define(
    "val/rm_spearman",
    "last",
    "Reward-model SFT: Spearman rank correlation of predicted scores with the labels (0 when the "
    "predictions are all equal).",
    "[-1, 1]",
)

# ----------------------------------------------------------------------------- reward-model SFT
SFT_LOSS = define(
    "sft/loss", "mean", "Token-mean cross-entropy on the score target tokens over all ranks.", "nats"
)
SFT_TOKEN_ACCURACY = define(
    "sft/token_accuracy", "mean", "Share of target tokens the model's argmax predicts.", "fraction"
)
SFT_TARGET_TOKENS = define(
    "sft/target_tokens", "sum", "Target (loss) tokens in the step, over all ranks.", "tokens"
)
SFT_TOKENS = define("sft/tokens", "sum", "Prompt + target tokens trained on in the step.", "tokens")
SFT_GRAD_NORM = define("sft/grad_norm", "max", "Gradient norm before clipping.", "")
SFT_LR = define("sft/lr", "last", "Learning rate of the step.", "")
SFT_SKIPPED = define(
    "sft/skipped", "max", "1 when the optimizer step was skipped (non-finite loss or gradient norm).", "0/1"
)
TIMING_ENCODE = define(
    "timing/encode",
    "sum",
    "Reward-model SFT: the batch's prompts, images and targets encoded on the driver.",
    "s",
)
RM_SERVE_RESTARTS = define(
    "rm/serve_restarts",
    "last",
    "Restarts of the reward model served inside the run (reward.thinking.serve) after it died.",
    "restarts",
)


# ----------------------------------------------------------------------------- console

# The console table's and `sophiavl train`'s summary columns, key -> header (absent keys skipped);
# everything else still goes to JSONL and the trackers.
SUMMARY_KEYS: dict[str, str] = {
    REWARD_OUTCOME: "outcome",
    REWARD_THINKING: "thinking",
    REWARD_FINAL: "final",
    TRUST_GAMMA: "gamma",
    TRUST_THINKING_COVERAGE: "coverage",
    ACTOR_PG_LOSS: "pg_loss",
    ACTOR_KL: "kl",
    ACTOR_ENTROPY: "entropy",
    ACTOR_GRAD_NORM: "grad_norm",
    RESPONSE_LENGTH_MEAN: "resp_len",
    VAL_OUTCOME: "val",
    SFT_LOSS: "sft_loss",
    VAL_RM_SPEARMAN: "val_spearman",
    VAL_RM_MAE: "val_mae",
    TIMING_STEP: "s/step",
}
