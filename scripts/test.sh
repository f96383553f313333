#!/usr/bin/env bash
# The whole test suite, in the test environment (built on first use by scripts/test-env.sh).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/test-env.sh"
venv=${SOPHIAVL_TEST_VENV:-$HOME/.cache/sophiavl/test-venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 VLLM_ENABLE_V1_MULTIPROCESSING=0 PYTHONUNBUFFERED=1
cd "$root"
"$venv/bin/ruff" check sophiavl_cli tests benchmarks scripts
"$venv/bin/ruff" format --check sophiavl_cli tests benchmarks scripts
exec "$venv/bin/python" -m pytest "$@"
