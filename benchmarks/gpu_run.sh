#!/usr/bin/env bash
# The GPU session's runs, writing everything under $OUT (see docs/testing.md, docs/benchmarks.md).
#   bash benchmarks/gpu_run.sh tests     # the test suite on the GPU
#   bash benchmarks/gpu_run.sh bench     # compare + the benchmark suite
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/dlu-gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "$1" in
  tests)
    timeout 540 python3 -m pytest tests -n 8 -q -p no:cacheprovider --junitxml="$OUT/tests.xml" 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
  bench)
    timeout 200 python3 -m dlu_triton compare --json "$OUT/compare.json" --plot "$OUT/compare.png" 2>"$OUT/compare.err" | tee "$OUT/compare.txt"
    timeout 330 python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable --benchmark-only \
      --benchmark-json="$OUT/benchmarks.json" --benchmark-columns=median,iqr,rounds 2>&1 | tail -4 > "$OUT/benchmarks.log"
    python3 benchmarks/summarise.py "$OUT/benchmarks.json" | tee "$OUT/benchmarks.md" ;;
esac
