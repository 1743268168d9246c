#!/usr/bin/env bash
# The prepared GPU check (issue 19): correctness of the CUDA path and its speed, in one run that
# finishes in under 8 minutes on one H100 (each section has its own time budget; a hard stop at
# 470 s still leaves the JSON of the sections done). Prints a table; writes JSON.
#
#   bash benchmarks/gpu_check.sh [OUT.json] [extra gpu_check.py arguments]
#   bash benchmarks/gpu_check.sh /tmp/check.json --dry-run     # the same code paths, tiny, on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu_check.json}
shift || true
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" || true
exec timeout 470 python benchmarks/gpu_check.py --json "$out" "$@"
