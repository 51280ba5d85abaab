#!/usr/bin/env bash
# Run the tests or the benchmarks on a GPU machine that has python3 with torch, triton and
# pytest but no package index: nothing is installed, the workspace sources go on PYTHONPATH.
#
#   bash tools/gpu.sh test [pytest args]     the whole suite (gpu-marked and bf16 tests included)
#   bash tools/gpu.sh bench [package]        every bench/*.py of one package, or of all
#   bash tools/gpu.sh demo                   the demo table
#
# Results (CSV, PNG, logs) go to $OUT when set, else bench-results/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
paths="$root/shared/src"
for src in "$root"/packages/*/src; do
  [ -d "$src" ] && paths="$paths:$src"
done
export PYTHONPATH="$paths${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
results=${OUT:-$root/bench-results}
mkdir -p "$results"

cmd=${1:-test}
shift || true
case "$cmd" in
  test)
    "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())'
    if [ $# -gt 0 ]; then
      "$PY" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$results/gpu-test.log"
      exit "${PIPESTATUS[0]}"
    fi
    # No arguments: one pytest per test file, up to $JOBS at a time (kernel compilation is
    # CPU-bound and the machine has many cores; pytest-xdist is not there), then a summary.
    jobs=${JOBS:-12}
    find shared packages tests_integration -name 'test_*.py' -not -path '*/.venv/*' | sort >"$results/test-files.txt"
    export results PY
    run_one() {
      log="$results/gpu-test-$(echo "$1" | tr '/' '_').log"
      if "$PY" -m pytest -p no:cacheprovider -q "$1" >"$log" 2>&1; then v=passed; else v=FAILED; fi
      echo "$v $1: $(tail -n 1 "$log")"
    }
    export -f run_one
    xargs -P "$jobs" -I{} bash -c 'run_one {}' <"$results/test-files.txt" | tee "$results/gpu-test-summary.txt"
    cat "$results"/gpu-test-*.log >"$results/gpu-test.log"
    rm -f "$results"/gpu-test-*_*.log
    ! grep -q '^FAILED' "$results/gpu-test-summary.txt"
    ;;
  bench)
    pkg=${1:-}
    if [ -n "$pkg" ]; then dirs="packages/$pkg/bench"; else dirs=$(ls -d packages/*/bench 2>/dev/null || true); fi
    [ -n "$dirs" ] || { echo "no bench/ folders found"; exit 1; }
    for d in $dirs; do
      [ -d "$d" ] || { echo "no such folder: $d"; exit 1; }
      for script in "$d"/bench_*.py; do
        [ -e "$script" ] || continue
        echo "== $script"
        "$PY" "$script" 2>&1 | tee -a "$results/bench.log"
      done
    done
    ;;
  demo)
    "$PY" tools/demo.py
    ;;
  *)
    echo "usage: bash tools/gpu.sh {test [pytest args] | bench [package] | demo}" >&2
    exit 2
    ;;
esac
