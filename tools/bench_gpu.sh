#!/usr/bin/env bash
# The GPU suite in one call: build the native ops with CUDA, run the CUDA tests, then every bench on the GPU, each
# step time-boxed (one that fails or hangs loses only itself) within one overall budget, and a summary at the end.
#
#   bash tools/bench_gpu.sh                     # about 10 minutes on one H100 / H200
#   QUICK=1 bash tools/bench_gpu.sh             # fewer repeats and cases
#   OUT=/tmp/figures BUDGET=900 PYTHON=python3 bash tools/bench_gpu.sh
#
# What it leaves in ${OUT:-runs/bench_gpu} (four files, so that a lent machine sends them all back):
#   summary.txt   one line per step (status, seconds) and each bench's table
#   figures.json  {"<step>": the JSON that step wrote} for every bench that wrote one
#   logs.txt      every step's output, one after the other
#   raw.tar.gz    each step's own log and JSON
# Missing Python packages (detlab needs msgspec and PyYAML besides torch) can travel as wheels in .whl/: they are
# installed into a temporary folder first. The exit status is the number of steps that did not pass.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench_gpu}
PYTHON=${PYTHON:-python3}
BUDGET=${BUDGET:-570}  # seconds for all steps together; a step gets at most what is left (minus the summary's 10)
QUICK=${QUICK:-0}
RAW=$OUT/raw
rm -rf "$RAW" && mkdir -p "$RAW"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# compile the CUDA kernels for this GPU alone (a quicker build)
GPU_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$GPU_ARCH}
[ -n "$TORCH_CUDA_ARCH_LIST" ] || unset TORCH_CUDA_ARCH_LIST  # no nvidia-smi: torch's guess
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
START=$SECONDS
STATUS=()
FAILED=0

if [ "$QUICK" = 1 ]; then REPEATS=5 ITERATIONS=3 RUNS=5 FUZZ=300; else REPEATS=15 ITERATIONS=10 RUNS=20 FUZZ=2000; fi

# step NAME LIMIT_SECONDS COMMAND...: run it with its output in $RAW/NAME.log, killed after the smaller of
# LIMIT_SECONDS and the budget left; a command may write $RAW/NAME.json (its --json).
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - START) - 10))
  if [ "$left" -lt 20 ]; then
    STATUS+=("$(printf '%-22s SKIPPED (budget of %ss spent)' "$name" "$BUDGET")")
    FAILED=$((FAILED + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local command="$*"
  echo "=== $name (at most ${limit}s): ${command%%$'\n'*}"
  local begin=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$RAW/$name.log" 2>&1
  local rc=$? took=$((SECONDS - begin)) verdict
  case $rc in
    0) verdict=ok ;;
    124 | 137) verdict="TIMED OUT after ${limit}s" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
  STATUS+=("$(printf '%-22s %-26s %4ss' "$name" "$verdict" "$took")")
  echo "    $verdict in ${took}s; last lines:"
  tail -n 3 "$RAW/$name.log" | sed 's/^/    | /'
}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 60 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bench_gpu_site .whl/*.whl
  export PYTHONPATH="/tmp/bench_gpu_site:$PYTHONPATH"
fi
step machine 30 bash -c "nvidia-smi; $PYTHON - <<'EOF'
import importlib, platform, torch, torchvision
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'torchvision', torchvision.__version__,
      'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
missing = []
for name in ('numpy', 'PIL', 'yaml', 'msgspec', 'tqdm', 'matplotlib', 'ninja', 'pytest', 'tensorboard'):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
print('missing Python packages:', ', '.join(missing) or 'none')
raise SystemExit(1 if missing or not torch.cuda.is_available() else 0)
EOF"
step build 240 env DETLAB_BUILD_CUDA=1 "$PYTHON" -m detlab.ops --build
step backend 30 "$PYTHON" -m detlab.ops --info
step cuda_tests 180 "$PYTHON" -m pytest -q -m cuda -rA -p no:cacheprovider tests
step bench_infer 120 "$PYTHON" tools/bench_infer.py --device cuda --runs "$RUNS" --json "$RAW/bench_infer.json"
step bench_infer_fp16 120 "$PYTHON" tools/bench_infer.py --device cuda --amp fp16 --runs "$RUNS" \
  --json "$RAW/bench_infer_fp16.json"
step bench_ops 90 "$PYTHON" tools/bench_ops.py --device cuda --repeats "$REPEATS" --json "$RAW/bench_ops.json"
step bench_train 120 "$PYTHON" tools/bench_train.py --device cuda --batch 8 --iterations "$ITERATIONS" \
  --json "$RAW/bench_train.json"
step bench_train_bf16 120 "$PYTHON" tools/bench_train.py --device cuda --amp bf16 --batch 8 \
  --iterations "$ITERATIONS" --json "$RAW/bench_train_bf16.json"
step fuzz_ops 90 "$PYTHON" tools/fuzz_ops.py --device cuda --cases "$FUZZ" --seed 0
step bench_eval 90 "$PYTHON" tools/bench_eval.py --repeat 3 --no-memory --json "$RAW/bench_eval.json"  # the CPU's

{
  echo "bench_gpu.sh on $(hostname) $(date -u +%FT%TZ): $((SECONDS - START))s of a ${BUDGET}s budget, QUICK=$QUICK"
  printf '%s\n' "${STATUS[@]}"
  for name in bench_infer bench_infer_fp16 bench_ops bench_train bench_train_bf16 bench_eval; do
    [ -f "$RAW/$name.log" ] || continue
    echo
    echo "--- $name"
    grep -E '^\||ratio|img/s|machine' "$RAW/$name.log" | head -40
  done
} >"$OUT/summary.txt"
"$PYTHON" - "$RAW" "$OUT/figures.json" <<'EOF'
import json, pathlib, sys
raw, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
figures = {}
for path in sorted(raw.glob("*.json")):
    try:
        figures[path.stem] = json.loads(path.read_text())
    except ValueError as error:
        figures[path.stem] = f"unreadable: {error}"
out.write_text(json.dumps(figures, indent=2))
EOF
for log in "$RAW"/*.log; do echo "===== $(basename "$log")"; cat "$log"; done >"$OUT/logs.txt"
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && rm -rf "$RAW"
cat "$OUT/summary.txt"
exit "$FAILED"
