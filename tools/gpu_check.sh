#!/usr/bin/env bash
# The GPU check, for one short lease: build for the visible GPU with every core, then (each stage
# under its own time limit, all of it under one deadline)
#   1. the headline benchmarks: cross-entropy bf16 8192x128256 vs torch and torch.compile, and
#      top-k + top-p filtering / sampling at B = 1, 32, 256, V = 128256 (GB/s, % of a copy);
#   2. the CUDA tests only (pytest -k cuda: the cuda cases of tests/conftest.py's DEVICES and the
#      tests marked or named cuda);
#   3. compute-sanitizer memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1) and racecheck on a subset,
#      restricted to logitops' kernels; ncu figures of the headline kernels;
#   4. the remaining benchmarks, stopped at the deadline with what they measured.
# Every stage publishes when it ends, so a stage cut by the deadline loses nothing before it. What
# OUTDIR holds at any moment (the device tool returns at most 8 files, 2 folders deep):
#   summary.md  stages.json  logs.tar.gz  results/headline.json  results/benchmarks.json
# logs.tar.gz holds every log, the raw JSON per benchmark family, the junit XML and the plots.
#
#   tools/gpu_check.sh OUTDIR [--device cuda|cpu] [--budget SECONDS] [--quick | --full]
#       [--smoke] [--skip-build] [--skip-tests] [--test-workers N] [--cap STAGE=SECONDS]
#       [--wheels DIR]
#
# --budget: seconds for everything (default 540, for a 600-second command). --quick (default):
# quick subsets in stage 4; --full: all shapes. --smoke: tiny shapes, plumbing only (what
# tests/test_benchmarks.py runs). --device cpu runs the same stages on the CPU without the CUDA
# ones (CI does, with --quick --skip-tests); its test stage runs the whole suite. --cap overrides
# one stage's time limit. --wheels DIR installs peer wheels (liger-kernel, flashinfer ...), no index.
set -uo pipefail
USAGE="usage: gpu_check.sh OUTDIR [--device cuda|cpu] [--budget S] [--quick|--full] [--smoke]
       [--skip-build] [--skip-tests] [--test-workers N] [--cap STAGE=S] [--wheels DIR]"
[ $# -ge 1 ] || { echo "$USAGE"; exit 2; }
OUT=$1
shift
DEVICE=cuda BUDGET=540 WHEELS="" FULL="" SMOKE="" SKIP_TESTS="" SKIP_BUILD="" TEST_WORKERS=4
declare -A CAP=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --quick) FULL=""; shift ;;
    --full) FULL=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --skip-build) SKIP_BUILD=1; shift ;;
    --test-workers) TEST_WORKERS=$2; shift 2 ;;
    --cap) CAP[${2%%=*}]=${2#*=}; shift 2 ;;
    *) echo "unknown argument $1"; echo "$USAGE"; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "--device must be cuda or cpu"; exit 2 ;; esac
case "$BUDGET" in ''|*[!0-9]*) echo "--budget must be a whole number of seconds"; exit 2 ;; esac

PY=${PYTHON:-python3}
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # a relative path
mkdir -p "$OUT/results"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=10  # seconds kept for the last plots and the final summary
WORK=$(mktemp -d "${TMPDIR:-/tmp}/logitops-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs" "$WORK/raw/headline" "$WORK/raw/benchmarks" "$WORK/plots"
: > "$WORK/stages.tsv"
export PYTHONUNBUFFERED=1
{
  printf 'device\t%s\nbudget\t%s s\n' "$DEVICE" "$BUDGET"
  printf 'started\t%s\ngit\t%s\n' "$(date -u +%FT%TZ)" "$(git rev-parse --short HEAD 2>/dev/null)"
  OPTIONS="${FULL:+--full }${SMOKE:+--smoke }${SKIP_BUILD:+--skip-build }${SKIP_TESTS:+--skip-tests}"
  printf 'options\t%s\n' "${OPTIONS:-none}"
} > "$WORK/meta.tsv"

left() { echo $((DEADLINE - $(date +%s))); }
pct() { echo $((BUDGET * $1 / 100)); }

# Writes OUT/summary.md, OUT/stages.json, OUT/results/*.json and OUT/logs.tar.gz from WORK, each
# replaced whole (written beside, then renamed). The summary falls back to a plain table if the
# Python report fails.
publish() {
  printf 'elapsed\t%s s\n' "$(($(date +%s) - START))" >> "$WORK/meta.tsv"
  if ! "$PY" benchmarks/run.py --report "$WORK" "$OUT" >> "$WORK/logs/report.log" 2>&1; then
    {
      echo "# logitops GPU check ($DEVICE): the report failed, see logs/report.log"; echo
      echo "| stage | status | seconds |"; echo "|---|---|---|"
      awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$WORK/stages.tsv"
    } > "$OUT/.summary.md.tmp" && mv -f "$OUT/.summary.md.tmp" "$OUT/summary.md"
  fi
  tar -C "$WORK" -czf "$OUT/.logs.tar.gz.tmp" . 2> /dev/null \
    && mv -f "$OUT/.logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

record() {  # record NAME STATUS SECONDS
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$WORK/stages.tsv"
}

# Stages whose cut at a time limit is an expected outcome (they keep what they wrote), and the
# benchmark stages among them, which are told their end to stop in time.
CUTTABLE=" headline_ce headline_sampling memcheck racecheck ncu benchmarks plots "
BENCHMARKS=" headline_ce headline_sampling benchmarks "

# stage NAME NEED CAP COMMAND...: runs COMMAND (log: logs/NAME.log) for at most CAP seconds (0:
# no cap of its own) and never past the deadline less RESERVE; skipped when fewer than NEED
# seconds are left. Benchmarks see the stage's end in LOGITOPS_BENCH_DEADLINE and stop early.
stage() {
  local name=$1 need=$2 cap=$3
  shift 3
  [ -n "${CAP[$name]:-}" ] && cap=${CAP[$name]}
  local limit=$(($(left) - RESERVE))
  if [ "$limit" -lt "$need" ]; then
    record "$name" "skipped (deadline: ${limit}s left, needs ${need}s)" 0
    publish
    return 0
  fi
  [ "$cap" -gt 0 ] && [ "$cap" -lt "$limit" ] && limit=$cap
  local margin=$((limit / 5))
  [ "$margin" -gt 30 ] && margin=30
  case "$BENCHMARKS" in
    *" $name "*) export LOGITOPS_BENCH_DEADLINE=$(($(date +%s) + limit - margin)) ;;
  esac
  echo "=== $name ($(($(date +%s) - START))s elapsed, limit ${limit}s) ==="
  local t0 log="$WORK/logs/$name.log"
  t0=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$? status=ok
  unset LOGITOPS_BENCH_DEADLINE
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    case "$CUTTABLE" in
      *" $name "*) status="cut at its ${limit}s limit (kept what it wrote)" ;;
      *) status="TIMED OUT (${limit}s)" ;;
    esac
  elif [ $rc -ne 0 ]; then
    status="FAILED (rc=$rc)"
  fi
  if [ "$(stat -c %s "$log")" -gt $((4 << 20)) ]; then  # keep the tarball small
    { head -c 1M "$log"; printf '\n[... cut: the log was %s bytes ...]\n' "$(stat -c %s "$log")"
      tail -c 3M "$log"; } > "$log.cut" && mv -f "$log.cut" "$log"
  fi
  record "$name" "$status" "$(($(date +%s) - t0))"
  tail -n 3 "$log"
  publish
}

skip() {  # skip NAME WHY
  record "$1" "skipped ($2)" 0
}

# A tool on PATH, else in the CUDA toolkit or Nsight Compute's folders; empty when not found.
find_tool() {
  local tool=$1 found
  found=$(command -v "$tool" 2> /dev/null) && { echo "$found"; return; }
  for found in "${CUDA_HOME:-/usr/local/cuda}/bin/$tool" /usr/local/cuda/bin/"$tool" \
      /usr/local/cuda/compute-sanitizer/"$tool" /opt/nvidia/nsight-compute/*/"$tool"; do
    [ -x "$found" ] && { echo "$found"; return; }
  done
}

# --- environment and tools ------------------------------------------------------------------
{
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "cpus $(nproc)"
} > "$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt"
: > "$WORK/tools.tsv"
for tool in nvcc compute-sanitizer ncu ninja; do
  where=$(find_tool "$tool")
  printf '%s\t%s\n' "$tool" "${where:-not found}" >> "$WORK/tools.tsv"
done
for module in xdist pytest_timeout matplotlib transformers liger_kernel flashinfer quack; do
  if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" 2> /dev/null; then
    printf 'python:%s\tfound\n' "$module" >> "$WORK/tools.tsv"
  else
    printf 'python:%s\tnot found\n' "$module" >> "$WORK/tools.tsv"
  fi
done
has_module() { grep -q "^python:$1"$'\t'"found" "$WORK/tools.tsv"; }
SANITIZER=$(find_tool compute-sanitizer)
NCU=$(find_tool ncu)
publish

if [ "$DEVICE" = cuda ] && { ! grep -q '^gpu ' "$WORK/environment.txt" \
    || grep -q '^gpu none' "$WORK/environment.txt"; }; then
  record environment "FAILED (no CUDA device visible to torch)" 0
  publish
  echo "no CUDA device visible: nothing to check (use --device cpu on a machine without one)"
  exit 1
fi

# --- build ----------------------------------------------------------------------------------
if [ -n "$WHEELS" ]; then
  stage peers 30 0 "$PY" -m pip install --no-index --no-deps --no-build-isolation "$WHEELS"/*.whl
fi
PIP_INSTALL=("$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .)
if [ -n "$SKIP_BUILD" ]; then
  skip build "--skip-build: the installed logitops"
elif [ "$DEVICE" = cuda ]; then
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  stage build 60 0 env LOGITOPS_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" LOGITOPS_PTXAS_VERBOSE=1 \
    MAX_JOBS="$(nproc)" NVCC_THREADS=2 "${PIP_INSTALL[@]}"
else
  stage build 30 0 env LOGITOPS_CUDA=0 MAX_JOBS="$(nproc)" "${PIP_INSTALL[@]}"
fi
CHECK_CUDA=""
[ "$DEVICE" = cuda ] && CHECK_CUDA="assert logitops.cuda_kernels_available(), 'no CUDA kernels in this build'"
stage import 10 60 "$PY" -c "import logitops; print(logitops.build_info()); $CHECK_CUDA"
if ! grep -q "^import"$'\t'"ok" "$WORK/stages.tsv"; then
  echo "logitops does not import (see logs/build.log, logs/import.log): stopping here"
  exit 1
fi

# --- 1. headline benchmarks -----------------------------------------------------------------
HEAD_OUT=(--out "$WORK/raw/headline")
if [ -n "$SMOKE" ]; then
  CE_ARGS=(--shapes 64x1000 --dtypes bf16 --reps 2 --providers logitops,torch)
  SAMPLING_ARGS=(--vocab 1000 --batches 1,4 --reps 2)
elif [ "$DEVICE" = cuda ]; then
  CE_ARGS=(--shapes 8192x128256 --dtypes bf16)
  SAMPLING_ARGS=(--vocab 128256 --batches 1,32,256)
else
  CE_ARGS=(--shapes "$([ -n "$FULL" ] && echo 1024x128256 || echo 256x32000)" --dtypes bf16)
  SAMPLING_ARGS=(--vocab 128256 --batches 1,32)
fi
stage headline_ce 20 "$(pct 22)" "$PY" benchmarks/bench_cross_entropy.py --device "$DEVICE" \
  "${CE_ARGS[@]}" "${HEAD_OUT[@]}"
stage headline_sampling 15 "$(pct 8)" "$PY" benchmarks/bench_sampling.py --device "$DEVICE" \
  "${SAMPLING_ARGS[@]}" "${HEAD_OUT[@]}"

# --- 2. tests -------------------------------------------------------------------------------
if [ -n "$SKIP_TESTS" ]; then
  skip tests "--skip-tests"
else
  PYTEST=("$PY" -m pytest -q -rfE -p no:cacheprovider --maxfail=50 --junitxml="$WORK/tests.xml")
  # Not -x: one failure must not hide the rest of a GPU session that may not come again.
  if [ "$DEVICE" = cuda ]; then
    PYTEST+=(-k cuda)
    if has_module xdist && [ "$TEST_WORKERS" -gt 1 ]; then PYTEST+=(-n "$TEST_WORKERS"); fi
  fi
  has_module pytest_timeout && PYTEST+=(--timeout=180)
  stage tests 30 "$([ "$DEVICE" = cuda ] && pct 30 || echo 0)" "${PYTEST[@]}" tests
fi

# --- 3. compute-sanitizer and ncu, logitops kernels only --------------------------------------
# All logitops kernels live in namespace logitops::cuda: mangled, their names hold this.
KERNELS=8logitops4cuda
# The subsets: every kernel family, odd shapes, tails, -inf / NaN rows (a -k expression over files,
# so that a renamed test deselects itself instead of stopping the stage).
SAN_PYTEST=(-m pytest -q -rfE -p no:cacheprovider --maxfail=10)
SAN_FILES=(tests/test_cross_entropy.py tests/test_bce_with_logits.py tests/test_sampling.py
  tests/test_distillation.py tests/test_distributed.py)
MEMCHECK_K="cuda and (test_shapes or test_matches_torch or test_nan_rows or test_top_p_matches_hf
  or test_extreme_and_masked_logits or test_ops_match_reference_statistics)"
RACECHECK_K="cuda and (test_shapes or test_nan_rows or test_top_p_matches_hf
  or test_extreme_and_masked_logits or test_ops_match_reference_statistics)"
if [ "$DEVICE" != cuda ]; then
  skip memcheck "--device cpu"; skip racecheck "--device cpu"
elif [ -z "$SANITIZER" ]; then
  skip memcheck "compute-sanitizer not found"; skip racecheck "compute-sanitizer not found"
else
  stage memcheck 30 "$(pct 12)" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
    --error-exitcode 1 --print-limit 20 --kernel-name kns=$KERNELS \
    "$PY" "${SAN_PYTEST[@]}" -k "${MEMCHECK_K//$'\n'/ }" "${SAN_FILES[@]}"
  stage racecheck 30 "$(pct 9)" "$SANITIZER" --tool racecheck --error-exitcode 1 --print-limit 20 \
    --kernel-name kns=$KERNELS "$PY" "${SAN_PYTEST[@]}" -k "${RACECHECK_K//$'\n'/ }" "${SAN_FILES[@]}"
fi
publish
NCU_PROGRAM="
import torch, logitops
x = torch.randn(8192, 128256, device='cuda', dtype=torch.bfloat16, requires_grad=True)
t = torch.randint(0, 128256, (8192,), device='cuda')
logitops.cross_entropy(x, t).backward()
l = torch.randn(256, 128256, device='cuda')
logitops.filter_logits(l, temperature=0.8, top_k=50, top_p=0.9)
logitops.sample(l, temperature=0.8, top_k=50, top_p=0.9)
torch.cuda.synchronize()
"
if [ "$DEVICE" != cuda ]; then
  skip ncu "--device cpu"
elif [ -z "$NCU" ]; then
  skip ncu "ncu not found"
else
  stage ncu 20 "$(pct 6)" "$NCU" --clock-control none --kernel-name-base mangled \
    --kernel-name regex:$KERNELS --launch-count 8 --csv \
    --metrics "$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import run; print(','.join(run.NCU_METRICS))")" \
    "$PY" -c "$NCU_PROGRAM"
fi

# --- 4. the remaining benchmarks ------------------------------------------------------------
# The headline families last: their headline shapes are already measured.
RUN_ARGS=(--device "$DEVICE" --out "$WORK/raw/benchmarks"
  --families linear_cross_entropy,bce_with_logits,distillation,vocab_parallel,token_logprobs,transformers,cross_entropy,sampling)
[ -n "$FULL" ] && RUN_ARGS+=(--full)
[ -n "$SMOKE" ] && RUN_ARGS+=(--smoke)
stage benchmarks 20 0 "$PY" benchmarks/run.py "${RUN_ARGS[@]}"
if has_module matplotlib; then
  RESERVE=0
  stage plots 5 30 bash -c '"$0" benchmarks/plot.py "$1/raw/headline" --out "$1/plots/headline" &&
    "$0" benchmarks/plot.py "$1/raw/benchmarks" --out "$1/plots/benchmarks"' "$PY" "$WORK"
else
  skip plots "matplotlib not found"
fi

publish
echo "=== done in $(($(date +%s) - START)) s of ${BUDGET} s; summary: $OUT/summary.md ==="
ls -lR "$OUT"
grep -q "FAILED\|TIMED OUT" "$WORK/stages.tsv" && exit 1
exit 0
