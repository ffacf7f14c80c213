#!/usr/bin/env bash
# The GPU checks in one go, for a machine with one CUDA GPU (about 9 minutes):
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh            # 5 training minutes a model
#     OUT=/tmp/gpu PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh 10
#     DEVICE=cpu EVAL_ARGS="--test-images 50 --gen-class-images 10 --samples-per-class 2" \
#         OUT=/tmp/gpu bash benchmarks/gpu_session.sh 0.2       # the script itself, checked on a CPU
#
# 1. a smoke test (a tiny model: 30 training steps and eval; the shipped model: generate) that
#    stops here if the CUDA path is broken, before the budget goes to training;
# 2. the main job's speed with the shipped model on the GPU: 64 candidates (one digit) and 640
#    (all ten), reranked, against the GPU's measured matmul peak (benchmarks/sample_speed.py);
# 3. a larger model than the shipped one with the same recipe (8 x 512, 4 query heads per
#    key/value head, rope 1d, QK-norm, ReLU^2, zero-initialised projections), trained for the
#    given minutes twice at once on the one GPU: AdamW (the shipped recipe's optimizer) and Muon
#    (the one the ablations kept), each with dropout 0.1 (~40 passes over the training lines);
#    SHIFT=0.5 trains both with shift augmentation (--shift-aug 0.5), the next thing to try for
#    a model that overfits; OPTIMIZERS=muon trains the Muon model alone;
# 4. `mnisttext eval` of each run's best/ on the full test split.
# What matters comes back under $OUT: session.log, speed.json, <run>_metrics.jsonl,
# <run>_eval.json, configs.tgz (the runs' config.json and args.json).
set -u
PY=${PYTHON:-python3}
MIN=${1:-5}
DEV=${DEVICE:-cuda}
PARTS=${PARTS:-smoke speed train}   # which of parts 1-3 to run (4 follows 3)
DROPOUT=${DROPOUT:-0.1}
SHIFT=${SHIFT:-0}
read -r -a OPTS <<< "${OPTIMIZERS:-adamw muon}"
read -r -a EVAL <<< "${EVAL_ARGS:-}"
OUT=${OUT:-runs/gpu_out}
W=runs/gpu
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
LOG="$OUT/session.log"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

say "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$LOG" 2>&1
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" >> "$LOG" 2>&1

if [[ $PARTS == *smoke* ]]; then
say "1. smoke"
$PY -m mnisttext train --preset tiny --max-steps 30 --batch-size 16 --eval-every 0 \
    --final-eval-images 50 --device $DEV --out "$W/smoke" --force >> "$LOG" 2>&1 || { say "smoke train FAILED"; exit 1; }
$PY -m mnisttext eval --checkpoint "$W/smoke/best" --device $DEV --test-images 100 \
    --gen-class-images 20 --samples-per-class 5 --json > "$OUT/smoke_eval.json" 2>> "$LOG" || { say "smoke eval FAILED"; exit 1; }
$PY -m mnisttext generate --digits 0-9 --device $DEV --img-dir "$W/img" > /dev/null 2>> "$LOG" || { say "generate FAILED"; exit 1; }
fi

if [[ $PARTS == *speed* ]]; then
say "2. speed"
$PY benchmarks/sample_speed.py --device $DEV --no-old --keep-plan --repeats "${SPEED_REPEATS:-5}" >> "$LOG" 2>&1 \
    && tail -n 1 benchmarks/history.jsonl > "$OUT/speed.json" || say "speed FAILED"
fi
[[ $PARTS == *train* ]] || exit 0

say "3. training, $MIN minutes each"
COMMON=(--recipe flagship --n-layer 8 --n-embd 512 --n-head 8 --n-kv-head 2 --rope 1d --qk-norm
        --act relu2 --zero-init-proj --dropout $DROPOUT --shift-aug $SHIFT --batch-size 128 --lr 1e-3 --warmup-steps 200
        --epochs 1000 --minutes "$MIN" --eval-every 30 --eval-images 1000 --final-eval-images 1000
        --log-every 100 --device $DEV --force)
declare -A EXTRA=([adamw]="" [muon]="--muon-lr 0.02")
declare -A PID=()
for r in "${OPTS[@]}"; do
    read -r -a X <<< "${EXTRA[$r]}"
    $PY -m mnisttext train "${COMMON[@]}" --optimizer "$r" "${X[@]}" --out "$W/$r" > "$W/$r.log" 2>&1 &
    PID[$r]=$!
done
for r in "${OPTS[@]}"; do wait "${PID[$r]}"; say "$r rc=$?"; done
for r in "${OPTS[@]}"; do
    tail -n 5 "$W/$r.log" >> "$LOG"
    cp "$W/$r/metrics.jsonl" "$OUT/${r}_metrics.jsonl" 2>/dev/null
done

say "4. eval (full test split)"
for r in "${OPTS[@]}"; do
    $PY -m mnisttext eval --checkpoint "$W/$r/best" --device $DEV "${EVAL[@]}" --json > "$OUT/${r}_eval.json" 2>> "$LOG" &
done
wait
tar -czf "$OUT/configs.tgz" "$W"/*/best/config.json "$W"/*/args.json "$W"/*.log 2>> "$LOG"
say "done"
