#!/usr/bin/env bash
# On a CUDA machine: run the kernel correctness tests with compiled Triton kernels (no
# interpreter), then print the whole GPU benchmark table and the target summary.
#
#   bash benchmarks/run_gpu.sh [OUTPUT_PREFIX]     (QUICK=1 for the short sweep,
#                                                  PEAK_GBPS=3350 to express bandwidth as % of peak)
# Writes OUTPUT_PREFIX.json and OUTPUT_PREFIX.md (default benchmarks/kernels_gpu).
set -euo pipefail
cd "$(dirname "$0")/.."

# run from the checkout: the editable install makes diffrec.kernels importable from here. It
# needs no network (no dependencies, no build isolation): GPU images hold torch, triton and pytest.
python -c "import diffrec.kernels" 2>/dev/null || python -m pip install -q --no-deps --no-build-isolation -e .
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh: no CUDA device visible')"
python -c "import triton" || { echo "run_gpu.sh: triton is not installed" >&2; exit 1; }

export TRITON_INTERPRET=0   # tests/conftest.py only sets it when unset
unset DIFFREC_KERNELS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

python -m pytest tests/test_kernels_*.py -q -p no:cacheprovider

prefix="${1:-benchmarks/kernels_gpu}"
args=(--device cuda --json "${prefix}.json" --markdown "${prefix}.md")
[[ -n "${QUICK:-}" ]] && args+=(--quick)
[[ -n "${PEAK_GBPS:-}" ]] && args+=(--peak-gbps "${PEAK_GBPS}")
COLUMNS="${COLUMNS:-200}" python -m diffrec.kernels.bench "${args[@]}"
