#!/usr/bin/env bash
# The GPU session's runs, writing everything under $OUT (see docs/testing.md, docs/benchmarks.md).
#   bash benchmarks/gpu_run.sh tests sweep compare bench   # tests, tile sweep, compare, benchmark suite
# mmcv's vectors travel in .peer/ (a copy of ../shared/peer-vectors/mmcv-carafe).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/dlu-gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
export DLU_TRITON_PEER_VECTORS=${DLU_TRITON_PEER_VECTORS:-$PWD/.peer}
for step in "$@"; do
  case "$step" in
    tests)
      timeout 300 python3 -m pytest tests -n 8 -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -8 ;;
    compare)
      timeout 200 python3 -m dlu_triton compare --json "$OUT/compare.json" --plot "$OUT/compare.png" 2>/dev/null | tee "$OUT/compare.txt" ;;
    sweep)
      timeout 300 python3 benchmarks/sweep_blocks.py 2>&1 | tee "$OUT/sweep.md" ;;
    bench)
      timeout 400 python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable --benchmark-only \
        --benchmark-json="$OUT/benchmarks.json" --benchmark-columns=median,iqr,rounds 2>&1 | tail -4
      python3 benchmarks/summarise.py "$OUT/benchmarks.json" | tee "$OUT/benchmarks.md" ;;
  esac
done
