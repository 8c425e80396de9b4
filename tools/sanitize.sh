#!/usr/bin/env bash
# Builds the CPU extension with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of
# the tree and runs the test suite against it (ASan preloaded into Python).
#
#   tools/sanitize.sh [pytest args...]      e.g. tools/sanitize.sh -x tests/test_cross_entropy.py
#
# Leak checking is off: CPython and torch keep allocations alive until exit by design.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar cf - | tar xf - -C "$WORK")
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
(cd "$WORK" && LOGITOPS_CUDA=0 CFLAGS="$SAN" CXXFLAGS="$SAN" LDFLAGS="$SAN" MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py -q build_ext --inplace > build.log 2>&1) || { tail -30 "$WORK/build.log"; exit 1; }
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)
cd "$WORK"
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
LD_PRELOAD="$LIBASAN $LIBUBSAN" PYTHONPATH="$WORK" \
  "$PY" -m pytest -q -p no:cacheprovider --import-mode=prepend "${@:-tests}"
