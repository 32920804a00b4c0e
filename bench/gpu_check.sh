#!/usr/bin/env bash
# GPU check of the xl spec (bench/gpu_check.py): one try on one GPU under a hard 8-minute limit.
#
#   bash bench/gpu_check.sh                       # every section; JSON in $OUT/gpu_check.json if OUT is set
#   GPU_CHECK_REHEARSAL=1 GPU_CHECK_REHEARSAL_CMD='...' bash bench/gpu_check.sh   # plus the rehearsal
#   bash bench/gpu_check.sh --train-batch 32      # extra flags go to every section's process
#   PYTHON=/path/to/python bash bench/gpu_check.sh  # default .venv/bin/python, else python on PATH
#
# Each section is its own process under `timeout`: a hung kernel, a broken CUDA context or a leaked
# DeepSpeed engine cannot take the later sections with it, and each row is on disk when it is printed.
# Time boxes shrink to what is left of GPU_CHECK_BUDGET_S (default 450 s, under the 480 s limit),
# keeping time for the summary.
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
RESULTS=${OUT:-$(mktemp -d)}/gpu_check_sections
rm -rf "$RESULTS" && mkdir -p "$RESULTS"

export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # this checkout's pixart, installed or not
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}  # the CPU work is small: model init, the FLOP check
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
export DS_ACCELERATOR=${DS_ACCELERATOR:-cuda}  # cpu only for a dry run of this script
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
# one process, one GPU, no launcher: DeepSpeed needs the rank variables (else it tries MPI)
export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN} NCCL_IB_DISABLE=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# less fragmentation: an out-of-memory size is skipped, and the next one must still find room
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

SUMMARY_RESERVE=25
section() {  # section NAMES BOX_S [flags]: bench/gpu_check.py --sections NAMES, BOX_S for each of them
    local names=$1 box=$2; shift 2
    local count=$(( $(tr -cd , <<< "$names" | wc -c) + 1 ))
    local left=$(( BUDGET_S - SECONDS - SUMMARY_RESERVE ))
    if [ "$left" -lt 15 ]; then
        echo "== $names == skipped: ${left}s of the budget left" && return
    fi
    [ $(( box * count )) -gt "$left" ] && box=$(( left / count ))
    # a fresh port per process: the last one's store may still hold its port
    MASTER_PORT=$(( 29500 + RANDOM % 2000 )) timeout -k 5 $(( box * count + 15 )) \
        "$PY" bench/gpu_check.py --sections "$names" --time-box "$box" --results "$RESULTS" "$@"
    local rc=$?
    [ $rc -ne 0 ] && echo "== $names == process ended with rc $rc (124, 137: the hard timeout)"
}

echo "gpu_check: budget ${BUDGET_S}s, python $PY, results in $RESULTS"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm,power.limit \
    --format=csv 2>&1 | head -5
section env,flops 25 "$@"
section train 150 "$@"
section kv 120 "$@"
section sampling 60 "$@"
section rehearsal "${GPU_CHECK_REHEARSAL_TIMEOUT:-90}" "$@"  # prints the skip unless GPU_CHECK_REHEARSAL=1
timeout -k 5 20 "$PY" bench/gpu_check.py --sections summary --results "$RESULTS" "$@"
echo "gpu_check: done in ${SECONDS}s"
