#!/usr/bin/env bash
# On a CUDA machine: continue the Table-2 reproduction (ML-1M by default) within a wall-clock
# budget, then pack the summary and run directories (checkpoints included, so the next machine
# resumes where this one stopped) into one archive.
#
#   DATA_ROOT=.data BUDGET_MIN=8 bash benchmarks/run_gpu_reproduce.sh ARCHIVE.tar.gz
#
# JOBS lists "dataset:models:recipe[:epochs]" separated by spaces (default
# "ml-1m:diffurec,diffurec-1step,sasrec-ce:fast"); SEEDS the seeds (default 1997); DEVICE cuda
# (cpu for a smoke run); PRECISION fp32 (the paper's) or bf16. The budget is shared by all jobs;
# a model cut short stops with its last finished epoch checkpointed and resumes on the next
# call. Unpack the archive in the checkout's root to merge its runs into benchmarks/results/.
#
# Works offline: the package is installed without dependencies or build isolation. A machine
# without tomli-w needs its wheel in .whl/ (see README, "On a GPU machine without internet").
set -euo pipefail
cd "$(dirname "$0")/.."

archive="${1:?usage: run_gpu_reproduce.sh ARCHIVE.tar.gz}"
data_root="${DATA_ROOT:-../shared/datasets}"
budget_min="${BUDGET_MIN:-8}"
jobs="${JOBS:-ml-1m:diffurec,diffurec-1step,sasrec-ce:fast}"
seeds="${SEEDS:-1997}"
device="${DEVICE:-cuda}"
precision="${PRECISION:-fp32}"

if ls .whl/*.whl >/dev/null 2>&1; then
    python -m pip install -q --no-index --no-deps --no-compile --target /tmp/diffrec-site .whl/*.whl
    export PYTHONPATH="/tmp/diffrec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python -c "import tomli_w" 2>/dev/null || { echo "run_gpu_reproduce.sh: tomli-w is missing; put its wheel in .whl/" >&2; exit 1; }
python -c "import diffrec.cli" 2>/dev/null || python -m pip install -q --no-deps --no-build-isolation -e .
if [[ "$device" == cuda* ]]; then
    python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'run_gpu_reproduce.sh: no CUDA device visible')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch; print('torch', torch.__version__)"

deadline=$(( $(date +%s) + budget_min * 60 ))
datasets=()
status=0
for job in $jobs; do
    IFS=: read -r dataset models recipe epochs <<<"$job"
    [[ -n "$dataset" && -n "$models" && -n "$recipe" ]] || { echo "run_gpu_reproduce.sh: bad job '$job' (want dataset:models:recipe[:epochs])" >&2; exit 2; }
    datasets+=("$dataset")
    seed_args=()
    for s in $seeds; do seed_args+=(--seed "$s"); done
    extra=()
    [[ -n "${epochs:-}" ]] && extra+=(--epochs "$epochs")
    # one invocation per model, so that every model finished within the budget is in the summary
    for model in ${models//,/ }; do
        left=$(( deadline - $(date +%s) ))
        if (( left < 60 )); then
            echo "== $dataset $model: budget spent, not started"
            continue
        fi
        echo "== $dataset $model ($recipe, ${left} s left)"
        set +e
        # SIGINT stops the trainer with one line; the run resumes from its last finished epoch
        timeout -s INT -k 60 "$left" diffrec reproduce --dataset "$dataset" --models "$model" --recipe "$recipe" \
            "${seed_args[@]}" "${extra[@]}" --device "$device" --precision "$precision" --data-root "$data_root" -q
        rc=$?
        set -e
        if (( rc == 124 || rc == 130 )); then
            echo "== $dataset $model: interrupted by the budget; it resumes on the next call"
        elif (( rc != 0 )); then
            echo "== $dataset $model: failed (exit $rc)"
            status=$rc
        fi
    done
done

paths=()
for dataset in $(printf '%s\n' "${datasets[@]}" | sort -u); do
    for p in "benchmarks/results/$dataset.json" "benchmarks/results/runs/$dataset"; do
        [[ -e "$p" ]] && paths+=("$p")
    done
done
if (( ${#paths[@]} )); then
    tar czf "$archive" "${paths[@]}"
    echo "packed ${paths[*]} into $archive"
    for dataset in $(printf '%s\n' "${datasets[@]}" | sort -u); do
        [[ -e "benchmarks/results/$dataset.json" ]] && diffrec reproduce --dataset "$dataset" --table-only
    done
fi
exit $status
