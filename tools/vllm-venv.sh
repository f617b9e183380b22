#!/usr/bin/env bash
# A virtual environment with the vLLM release the default serving image pins, outside the repository, so a test can
# run that release's own argument parser on every Deployment the builders make. A second run installs nothing.
# Prints the environment's directory. GPTOPS_SKIP_VLLM=1 skips it (the test then says why it is skipped).
set -euo pipefail

VLLM_VERSION=0.33.0  # keep in step with DEFAULT_VLLM_IMAGE in operator/gptops/api/constants.py (a test checks)

cache=${GPTOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gptops}
venv=$cache/vllm-$VLLM_VERSION
if [ -f "$venv/.installed" ]; then
  echo "$venv"
  exit 0
fi
python=${PYTHON:-python3}
echo "installing vllm==$VLLM_VERSION into $venv (cold: several GB from PyPI, a few minutes)" >&2
rm -rf "$venv"  # a half-made one (no .installed stamp) is made again
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet "vllm==$VLLM_VERSION" >&2
touch "$venv/.installed"
echo "$venv"
