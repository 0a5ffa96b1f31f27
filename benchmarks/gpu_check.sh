#!/usr/bin/env bash
# Every GPU check of the training speed work in one call of at most GPU_CHECK_SECONDS (540):
# the environment, all cuda-marked tests (210 s at most), bench_train.py (170 s, its rows printed
# as they are measured, the compiled row within 60 s of its own), the real FER+ data rebuilt from
# .devdata/ (in the background meanwhile), and the paper's table (reproduce.py: every mode with
# seed 0, GPU_CHECK_JOBS runs at once) within the time left; the table stops after a saved epoch
# when the time is up. Results and logs go to $OUT: summary.txt and gpu_check.tar.gz (logs, run
# folders without checkpoints).
#
#   bash benchmarks/gpu_check.sh          # the whole check (run from the repository root)
#   GPU_CHECK_SECONDS=200 bash benchmarks/gpu_check.sh table   # next call while the machine is
#                                         # warm (same /tmp): resume the table where it stopped
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # CPU rehearsal: synthetic data, vgg13_tiny, 1 epoch
#
# .devdata/ must hold fer2013_pixels.npy.xz, make_fer2013_csv.py and wheels/ with pytest (the GPU
# machine has no pytest and no network); `bash benchmarks/prepare_devdata.sh` fills it from
# ../shared (FER2013 pixels: never committed; the folder is git-ignored), and the device tool's
# run carries it: carry [".devdata"]. Each step runs under `timeout`, so one failure or hang
# costs its own limit and no more.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives the results}"
ONLY=${1:-all}
TOTAL=${GPU_CHECK_SECONDS:-540}
WORK=${GPU_CHECK_WORK:-/tmp/ferplus_gpu}  # kept between calls while the machine stays warm
SMOKE=${GPU_CHECK_SMOKE:-0}
JOBS=${GPU_CHECK_JOBS:-4}
SEEDS=${GPU_CHECK_SEEDS:-1}
START=$SECONDS
START_TIME=$(date -u +%H%M%S)
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the package of this tree, not installed there
PY=python3
$PY -c "import pytest" 2>/dev/null || $PY -m pip install --quiet --no-index --find-links .devdata/wheels pytest
mkdir -p "$OUT" "$WORK/logs"
SUMMARY="$OUT/summary.txt"

if [ "$SMOKE" = 1 ]; then
  # The cuda tests are only collected here (skipped without a GPU): their imports are checked.
  DEVICE=cpu MODEL=vgg13_tiny EPOCHS=${GPU_CHECK_EPOCHS:-1} BENCH_ARGS="--device cpu --model vgg13_tiny --steps 2 --jobs 1 2 --no-compiled --repeat 1"
  CUDA_TESTS="tests/test_fast_step.py tests/test_multirun.py tests/test_gpu_path.py tests/test_step_fallback.py"
else
  # The compiled row has its own budget within the benchmark's, so that compiling cannot eat the rows before it.
  DEVICE=cuda MODEL=vgg13 EPOCHS=${GPU_CHECK_EPOCHS:-100} BENCH_ARGS="--device cuda --compiled-seconds 60"
  CUDA_TESTS="tests/"
fi

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( TOTAL - (SECONDS - START) )); }

# step NAME LIMIT COMMAND...: run COMMAND into logs/NAME.log under timeout, at most what time is left.
step() {
  local name=$1 limit=$2; shift 2
  local room=$(( $(left) - 15 ))
  (( limit > room )) && limit=$room
  if (( limit < 10 )); then say "== $name: skipped (no time left)"; return 1; fi
  say "== $name: started at $(( SECONDS - START ))s, limit ${limit}s"
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  local rc=$?
  say "== $name: exit $rc after $(( SECONDS - began ))s"
  return $rc
}

bundle() {  # what comes back: the summary and one archive (no checkpoints), which keeps every call's summary
  cp "$SUMMARY" "$WORK/logs/summary-$ONLY-$START_TIME.txt"
  tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" --exclude='*.pt' logs $( [ -d "$WORK/runs" ] && echo runs ) 2>/dev/null
}

say "== gpu_check $ONLY at $(date -u +%FT%TZ), budget ${TOTAL}s, smoke $SMOKE"

# The real data, once per machine, in the background while the GPU is tested and benchmarked:
# fer2013.csv rebuilt from the packed pixels, then prepared.
DATA="$WORK/data"
if [ "$SMOKE" = 1 ]; then
  step data 240 nice bash -c "[ -f '$DATA/FER2013Test/label.csv' ] || $PY generate_training_data.py -d '$DATA' --quiet" &
else
  step data 240 nice bash -c "
    set -e
    [ -f '$DATA/FER2013Test/label.csv' ] && exit 0
    cp data/fer2013new.csv .devdata/fer2013new.csv
    $PY .devdata/make_fer2013_csv.py '$WORK/fer2013.csv'
    $PY generate_training_data.py -d '$DATA' -fer '$WORK/fer2013.csv' -ferplus data/fer2013new.csv --quiet" &
fi
DATA_JOB=$!

if [ "$ONLY" = all ]; then
  step env 60 bash -c "nvidia-smi || true; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")'"
  cat "$WORK/logs/env.log" >>"$SUMMARY"

  # Every cuda-marked test: the graph against eager, a refused capture, four staggered full-width
  # runs at once against each alone, steady-state epochs under sync debug mode, the side stream.
  step tests 210 $PY -m pytest -q -p no:cacheprovider -rs -m cuda $CUDA_TESTS
  tail -n 25 "$WORK/logs/tests.log" >>"$SUMMARY"

  step bench 170 $PY benchmarks/bench_train.py $BENCH_ARGS
  grep -v '^\s*File\|^Traceback\|^    ' "$WORK/logs/bench.log" >>"$SUMMARY"
  bundle
fi
wait $DATA_JOB
tail -n 8 "$WORK/logs/data.log" >>"$SUMMARY"

# The table: every mode with seed 0 at once; stops after a saved epoch when the time is up and
# resumes from there on the next call ("table").
budget=$(( $(left) - 45 ))
(( budget >= 30 )) && step "table-$START_TIME" $(( budget + 30 )) $PY reproduce.py -d "$DATA" --model $MODEL --device $DEVICE -e $EPOCHS \
  --seeds "$SEEDS" --jobs "$JOBS" --output "$WORK/runs" --time-budget "$budget"
say "== table: runs (last epoch line, then the result where finished)"
for log in "$WORK"/runs/*/train.log; do
  [ -f "$log" ] || continue
  say "$(basename "$(dirname "$log")"): $(grep '^epoch' "$log" | tail -n 1)"
  grep -E '^(best|test accuracy)' "$log" >>"$SUMMARY"
done
for results in "$WORK"/runs/*/results.json; do
  [ -f "$results" ] || continue
  $PY -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['mode'], 'seed', r['seed'], 'test', round(100 * r['test_accuracy'], 2), 'wall_s', round(r['wall_seconds']), 'train images/s', round(r['train_images_per_second']))" "$results" >>"$SUMMARY"
done
[ -f "$WORK/runs/reproduce.md" ] && cat "$WORK/runs/reproduce.md" >>"$SUMMARY"
bundle
say "== done after $(( SECONDS - START ))s"
