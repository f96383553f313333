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
# Whole files to SOPHIAVL_TEST_WORKERS pytest-xdist workers (2: the CI machine's cores; a training
# run leaves about a quarter of two cores idle while processes start); 0 runs in this process.
exec "$venv/bin/python" -m pytest -n "${SOPHIAVL_TEST_WORKERS:-2}" --dist loadfile "$@"
