#!/usr/bin/env bash
# One GPU check, prepared ahead: every number issue 17 asks of a GPU, in one run of at most ~8 minutes,
# ending with one table (also written to $OUT/gpu_check.md when $OUT is set). Run from the repo root on
# the lent machine, whose python3 holds torch with CUDA; Ray and the other packages its image lacks
# travel as wheels in .whl/ (docs/benchmarks.md says which), installed to /tmp/site, nothing fetched:
#
#     bash benchmarks/gpu_check.sh            # on the GPU machine
#     SMALL=1 bash benchmarks/gpu_check.sh    # here, on a CPU: the same steps at toy sizes (a dry run)
#
# It exits 1 when a step failed or ran out of time (its row says FAILED), so the dry run can fail a test suite
# (tests/test_gpu_check.py, slow tier). Pools and checkpoints go under $WORK (default /tmp).
#
# Steps (seconds are the budget each was sized for on an H100, not measurements):
#   1. scoring stream, 1.28M images, fp32 then bf16 (~120 s with the pool's writing)
#   2. training images/s: bare loop vs Ray Train, 1 worker (~90 s)
#   3. the VAAL paper's CIFAR-10 setting, full 45,000-image epochs, extrapolated to 100 epochs (~120 s)
#   4. a whole 1.28M-image round at --epochs 1 (~150 s)
#   5. --embedding throughput: resnet50 features at 224, one actor's scorer (~30 s)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RAY_DATA_DISABLE_PROGRESS_BARS=1
LOG=${OUT:-/tmp}/gpu_check.log TABLE=${OUT:-/tmp}/gpu_check.md WORK=${WORK:-/tmp}
: >"$LOG"

if [ -n "${SMALL:-}" ]; then
    # the least that keeps each step's meaning: two scoring batches per actor and b below a batch; two VAE
    # batches an epoch, on the cpu preset's narrow VAE where the step allows (the paper's takes minutes a batch
    # on a shared CPU: half a batch an epoch in the paper setting); the limits x5, for Ray's start-up there
    GPU=""; SCORE_IMAGES=1024; ROUND_IMAGES=1000; PAPER_IMAGES=250; EPOCH_IMAGES=256; PAPER_EPOCH_IMAGES=32
    ROUND_EPOCH_IMAGES=256; TRAIN_IMAGES=1000; TRAIN_PRESET=cpu; BUDGET=100; BATCH=256; ACTORS=2; THREADS=1
    EMBED_BATCH=4; EMBED_BATCHES=2; SLACK=5
else
    GPU="--use-gpu"; SCORE_IMAGES=1280000; ROUND_IMAGES=1280000; PAPER_IMAGES=50000; EPOCH_IMAGES=45000
    PAPER_EPOCH_IMAGES=$EPOCH_IMAGES; ROUND_EPOCH_IMAGES=$((EPOCH_IMAGES * 4)); TRAIN_IMAGES=100000
    TRAIN_PRESET=cifar10; BUDGET=1000; BATCH=4096; ACTORS=4; THREADS=4; EMBED_BATCH=256; EMBED_BATCHES=8; SLACK=1
fi

step() {   # name, time limit in seconds, command...: runs it, keeps its output, notes a failure
    local name=$1 limit=$(($2 * SLACK)); shift 2
    echo "=== $name" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -E '^\|' || echo "| $name | FAILED or timed out, see $LOG |"
}

{
echo "# gpu_check $(date -u +%FT%TZ) on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'no GPU')"
step "scoring, fp32" 150 $PY benchmarks/score_throughput.py --images $SCORE_IMAGES --budget $BUDGET \
    ${GPU:+--gpu} --batch $BATCH --actors $ACTORS --threads $THREADS --work $WORK/gpu-check-score
[ -n "$GPU" ] && step "scoring, bf16" 90 $PY benchmarks/score_throughput.py --images $SCORE_IMAGES --budget $BUDGET \
    --gpu --amp --batch $BATCH --actors $ACTORS --threads $THREADS --work $WORK/gpu-check-score
step "training images/s" 120 $PY benchmarks/train_throughput.py --images $TRAIN_IMAGES --preset $TRAIN_PRESET \
    --epochs 3 --epoch-images $((EPOCH_IMAGES / 2)) --workers 1 --no-bare-after $GPU --work $WORK/gpu-check-train
step "paper setting" 150 $PY benchmarks/paper_setting.py --images $PAPER_IMAGES --epoch-images $PAPER_EPOCH_IMAGES \
    $GPU ${GPU:+--amp} --work $WORK/gpu-check-paper
step "1.28M round" 170 $PY benchmarks/round_scale.py --images $ROUND_IMAGES --epochs 1 \
    --epoch-images $ROUND_EPOCH_IMAGES $GPU --work $WORK/gpu-check-round
step "embedding, resnet50" 60 $PY benchmarks/embed_throughput.py --arch resnet50 --batch $EMBED_BATCH \
    --batches $EMBED_BATCHES ${GPU:+--gpu}
} | tee "$TABLE"
! grep -q "FAILED or timed out" "$TABLE"
