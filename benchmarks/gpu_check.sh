#!/usr/bin/env bash
# The one-command GPU check: build for the visible GPU, run the tests, compute-sanitizer on a
# subset, the benchmarks, plots and a markdown summary, all into OUTDIR; within a deadline
# (default 450 s) so it fits a short lease. Stages past the deadline are skipped, not killed.
#
#   benchmarks/gpu_check.sh OUTDIR [--device cuda|cpu] [--budget SECONDS] [--wheels DIR] [--quick]
#
# --device cpu runs the same stages without the CUDA ones (that is how CI tests this script).
# --wheels DIR installs peer wheels (liger-kernel, flashinfer, quack ...) from DIR, no index.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUTDIR [--device cuda|cpu] [--budget S] [--wheels DIR] [--quick]}
shift
DEVICE=cuda BUDGET=450 WHEELS="" QUICK="" SKIP_TESTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --quick) QUICK=--quick; shift ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    *) echo "unknown argument $1"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
mkdir -p "$OUT/results"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
SUMMARY="$OUT/summary.md"
export PYTHONUNBUFFERED=1
: > "$OUT/stages.tsv"

left() { echo $((DEADLINE - $(date +%s))); }
# stage NAME MIN_SECONDS_NEEDED COMMAND...: runs COMMAND (log in OUT/NAME.log) with a timeout of
# the time left, or skips it when less than MIN_SECONDS_NEEDED remain.
stage() {
  local name=$1 need=$2; shift 2
  local remaining; remaining=$(left)
  if [ "$remaining" -lt "$need" ]; then
    printf '%s\tskipped (deadline: %ss left, needs %ss)\t0\n' "$name" "$remaining" "$need" \
      | tee -a "$OUT/stages.tsv"
    return 0
  fi
  local t0; t0=$(date +%s)
  echo "=== $name ($(($(date +%s) - START))s elapsed, ${remaining}s left) ==="
  timeout --signal=INT --kill-after=15 "$remaining" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(($(date +%s) - t0))
  local status=ok
  [ $rc -ne 0 ] && status="FAILED (rc=$rc)"
  [ $rc -eq 124 ] && status="TIMED OUT"
  # A benchmark cut by the deadline is an expected outcome of a short lease, not a failure.
  [ $rc -eq 124 ] && [ "$name" = benchmarks ] && status="stopped at the deadline"
  printf '%s\t%s\t%s\n' "$name" "$status" "$dt" | tee -a "$OUT/stages.tsv"
  tail -n 3 "$OUT/$name.log"
  return 0
}

{
  echo "date: $(date -u +%FT%TZ)"; echo "git: $(git rev-parse --short HEAD 2>/dev/null)"
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

if [ -n "$WHEELS" ]; then
  stage peers 30 "$PY" -m pip install --no-index --no-deps --no-build-isolation "$WHEELS"/*.whl
fi

if [ "$DEVICE" = cuda ]; then
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  stage build 60 env LOGITOPS_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" LOGITOPS_PTXAS_VERBOSE=1 \
    MAX_JOBS="$(nproc)" NVCC_THREADS=4 "$PY" -m pip install --no-build-isolation -v -e .
else
  stage build 60 env LOGITOPS_CUDA=0 MAX_JOBS="$(nproc)" \
    "$PY" -m pip install --no-build-isolation -e .
fi

if [ -z "$SKIP_TESTS" ]; then
  # Not -x: one failure must not hide the rest of a GPU session that may not come again.
  stage tests 60 "$PY" -m pytest -q --maxfail=25 --junitxml="$OUT/tests.xml" tests
fi

if [ "$DEVICE" = cuda ] && command -v compute-sanitizer > /dev/null; then
  SUBSET="tests/test_cross_entropy.py::test_shapes tests/test_bce_with_logits.py::test_matches_torch tests/test_sampling.py::test_nan_rows tests/test_sampling.py::test_top_p_matches_hf tests/test_distributed.py::test_ops_match_reference_statistics"
  # shellcheck disable=SC2086
  stage memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$PY" -m pytest -q -x -k cuda $SUBSET
  # shellcheck disable=SC2086
  stage racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 1 \
    "$PY" -m pytest -q -x -k "cuda and (test_shapes or test_nan_rows)" $SUBSET
fi

# The benchmarks stop themselves at the deadline, keeping what they measured.
export LOGITOPS_BENCH_DEADLINE=$((DEADLINE - 60))
FULL=--full
[ -n "$QUICK" ] && FULL=""
stage benchmarks 40 "$PY" benchmarks/run.py --device "$DEVICE" $FULL --out "$OUT/results"
stage plots 5 "$PY" benchmarks/plot.py "$OUT/results"

{
  echo "# logitops GPU check ($DEVICE)"
  echo
  echo '```'; cat "$OUT/environment.txt"; echo '```'
  echo
  echo "| stage | status | seconds |"; echo "|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s |\n", $1, $2, $3}' "$OUT/stages.tsv"
  echo
  if [ -f "$OUT/tests.log" ]; then echo "Tests: $(grep -E 'passed|failed' "$OUT/tests.log" | tail -1)"; fi
  for tool in memcheck racecheck; do
    [ -f "$OUT/$tool.log" ] && echo "$tool: $(grep -E 'ERROR SUMMARY|passed|failed' "$OUT/$tool.log" | tail -2 | tr '\n' ' ')"
  done
  echo
  echo "## Benchmarks"
  echo
  echo '```'
  grep -vE '^  ' "$OUT/benchmarks.log" 2>/dev/null | grep -E '^(#|op |-|[a-z_]+ +(fwd|bwd))' || true
  echo '```'
  echo
  echo "Total: $(($(date +%s) - START)) s of a ${BUDGET} s budget."
} > "$SUMMARY"
echo "=== done in $(($(date +%s) - START)) s; summary: $SUMMARY ==="
grep -q "FAILED\|TIMED OUT" "$OUT/stages.tsv" && exit 1
exit 0
