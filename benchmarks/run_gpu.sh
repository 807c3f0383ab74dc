#!/usr/bin/env bash
# On a CUDA machine, in under 8 minutes: the kernel tests with compiled Triton kernels (no
# interpreter), the kernel benchmarks (quick sweep, autotuned kernels), a short training
# throughput check, then one line per GPU target: op, size, time, achieved vs target.
#
#   bash benchmarks/run_gpu.sh [OUTPUT_PREFIX]        (run from anywhere; it works from the checkout root)
#
# Writes OUTPUT_PREFIX.json and OUTPUT_PREFIX.md (default benchmarks/kernels_gpu), plus one
# OUTPUT_PREFIX_<op>.json per benchmarked op. Environment:
#   BUDGET_S=470      wall-clock budget of all steps together (each step also has its own limit)
#   FULL=1            the whole benchmark sweep instead of the quick one (needs a larger BUDGET_S)
#   PEAK_GBPS=4800    peak memory bandwidth for the noise target (default: the driver's figure)
#   DATA=path         dataset of the throughput check (default ../shared/datasets/beauty; skipped if absent)
# Every step runs under `timeout`; a failed or timed-out step is reported and the next one still
# runs; the exit status is 1 if any step failed, timed out or was skipped for lack of time.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${1:-benchmarks/kernels_gpu}"
budget_s="${BUDGET_S:-470}"
data="${DATA:-../shared/datasets/beauty}"
start_s=$(date +%s)
failed=()

# step NAME LIMIT_S COMMAND...: run COMMAND under `timeout`, for at most LIMIT_S seconds and at
# most what is left of the budget; record failures instead of stopping.
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$(( budget_s - ($(date +%s) - start_s) ))
    if (( left < 15 )); then
        echo "== ${name}: SKIPPED (budget of ${budget_s}s spent)"
        failed+=("${name}: skipped")
        return 0
    fi
    if (( limit > left )); then
        limit=$left
    fi
    echo "== ${name} (limit ${limit}s)"
    local t0 rc=0
    t0=$(date +%s)
    timeout --kill-after=10 "${limit}" "$@" || rc=$?
    local took=$(( $(date +%s) - t0 ))
    if (( rc == 0 )); then
        echo "== ${name}: ok (${took}s)"
    elif (( rc == 124 || rc == 137 )); then
        echo "== ${name}: TIMED OUT (${took}s)"
        failed+=("${name}: timed out after ${took}s")
    else
        echo "== ${name}: FAILED with exit status ${rc} (${took}s)"
        failed+=("${name}: exit status ${rc}")
    fi
}

# set-up: the editable install makes diffrec.kernels importable; it needs no network (no
# dependencies, no build isolation): GPU images hold torch, triton and pytest.
timeout 60 python -c "import diffrec.kernels" 2>/dev/null \
    || timeout 180 python -m pip install -q --no-deps --no-build-isolation -e .
timeout 60 python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'run_gpu.sh: no CUDA device visible')"
timeout 60 python -c "import triton" || { echo "run_gpu.sh: triton is not installed" >&2; exit 1; }

export TRITON_INTERPRET=0   # tests/conftest.py only sets it when unset
export COLUMNS="${COLUMNS:-200}"   # width of the benchmark tables
unset DIFFREC_KERNELS
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 60 python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

# 1. correctness with compiled kernels, one pytest process per test file (compiling the kernels
#    dominates and is single-threaded per process). Autotuning is off here (it would tune every
#    test shape); every CUDA candidate is still compiled and checked by the *_every_* tests, and
#    test_autotuned_launches_on_cuda switches autotuning on for one shape per op.
step "kernel tests (compiled)" 240 bash -c '
    set -uo pipefail
    logs=$(mktemp -d)
    files=(tests/test_kernels_*.py)
    pids=()
    for f in "${files[@]}"; do
        DIFFREC_AUTOTUNE=0 python -m pytest "$f" -q -p no:cacheprovider >"$logs/${f##*/}.log" 2>&1 &
        pids+=($!)
    done
    rc=0
    for i in "${!files[@]}"; do
        wait "${pids[$i]}" || rc=1
        echo "-- ${files[$i]}: $(tail -n 1 "$logs/${files[$i]##*/}.log")"
    done
    if (( rc )); then
        for f in "$logs"/*.log; do echo "---- ${f##*/}"; tail -n 80 "$f"; done
    fi
    exit "$rc"'

# 2. benchmarks, one op at a time (the autotuning of a shape happens in its warm-up, untimed)
sweep=(--quick)
[[ -n "${FULL:-}" ]] && sweep=()
peak=()
[[ -n "${PEAK_GBPS:-}" ]] && peak=(--peak-gbps "${PEAK_GBPS}")
for op in noise_inject topk linear_ce; do
    rm -f "${prefix}_${op}.json"
    step "benchmark ${op}" 120 \
        python "benchmarks/benchmark_${op}.py" --device cuda ${sweep[@]+"${sweep[@]}"} ${peak[@]+"${peak[@]}"} \
        --json "${prefix}_${op}.json"
done

# 3. training throughput on the GPU (--batches keeps it short)
if [[ -d "${data}" ]]; then
    step "training throughput (20 batches per model)" 90 \
        python benchmarks/train_throughput.py --data "${data}" --batches 20 --device cuda
else
    echo "== training throughput: no dataset at ${data} (set DATA=...); not run"
fi

# 4. one line per GPU target, from whatever the benchmarks measured
timeout 60 python - "${prefix}" "${PEAK_GBPS:-}" <<'PY' || failed+=("target summary")
import json, os, sys
from diffrec.kernels.bench import rows_to_markdown, target_summary

prefix, peak = sys.argv[1], float(sys.argv[2]) if sys.argv[2] else None
rows = []
for op in ("noise_inject", "topk", "linear_ce"):
    path = f"{prefix}_{op}.json"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            rows.extend(json.load(fh))
with open(f"{prefix}.json", "w", encoding="utf-8") as fh:
    json.dump(rows, fh, indent=1)
with open(f"{prefix}.md", "w", encoding="utf-8") as fh:
    fh.write(rows_to_markdown(rows) + "\n")
peak = peak or next((r.get("peak_gbps") for r in rows if r.get("peak_gbps")), None)
print("== GPU targets")
for line in target_summary(rows, peak) or ["TARGET (no benchmark rows were measured)"]:
    print(line)
PY

echo "== done in $(( $(date +%s) - start_s ))s (budget ${budget_s}s)"
if (( ${#failed[@]} )); then
    printf '== problem: %s\n' "${failed[@]}"
    exit 1
fi
