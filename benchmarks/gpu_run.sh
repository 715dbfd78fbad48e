#!/usr/bin/env bash
# The GPU runs, writing everything under $OUT (see docs/testing.md, docs/benchmarks.md).
#   bash benchmarks/gpu_run.sh tests sweep compare bench   # tests, tile sweep, compare, benchmark suite
#   bash benchmarks/gpu_run.sh props sanitize              # 600-case property sweep, compute-sanitizer
#   bash benchmarks/gpu_run.sh profile                     # Nsight Compute, one launch of each kernel
#   bash benchmarks/gpu_run.sh modules                     # the modules' time: host, kernels, idle (target 4)
#   bash benchmarks/gpu_run.sh host                        # host time of each layer of a call (launch, op, autograd)
#   COMMIT=SHA bash benchmarks/gpu_run.sh targets          # docs/performance.md's targets -> $OUT/gpu-targets.json
#   bash benchmarks/gpu_run.sh candidates                  # every folder of benchmarks/candidates/ against main
#   AB_OLD="DIR [DIR...]" bash benchmarks/gpu_run.sh ab    # A/B against each DIR (from benchmarks/ab.py --export REV DIR);
#                                                          # AB_ARGS="--ops dlu_backward" passes options on,
#                                                          # AB_TAG=fwd writes ab-fwd.md (several A/Bs a call)
# Steps run in the order given, each under its own timeout, so one invocation can run a whole
# plan (docs/performance.md, "Next GPU run").
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/dlu-gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
for step in "$@"; do
  case "$step" in
    tests)
      timeout "${TESTS_TIMEOUT:-200}" python3 -m pytest tests -n 12 -q -ra -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -8 ;;
    compare)
      timeout 200 python3 -m dlu_triton compare --json "$OUT/compare.json" --plot "$OUT/compare.png" 2>/dev/null | tee "$OUT/compare.txt" ;;
    modules)
      timeout 200 python3 benchmarks/profile_modules.py --out "$OUT" 2>&1 | tee "$OUT/profile-modules-table.txt" | tail -18 ;;
    targets)
      timeout 300 python3 benchmarks/gpu_targets.py --commit "${COMMIT:?set COMMIT to the main commit measured}" \
        --out "$OUT/gpu-targets.json" 2>&1 | tee "$OUT/gpu-targets.txt" | tail -12 ;;
    host)
      timeout 200 python3 benchmarks/host_costs.py --out "$OUT/host-costs.md" 2>/dev/null | tail -24 ;;
    ab)
      # shellcheck disable=SC2086  # AB_OLD may name several folders, AB_ARGS several options
      # ab.md holds every finished row even when the time limit stops the run
      ab="$OUT/ab${AB_TAG:+-$AB_TAG}"
      timeout "${AB_TIMEOUT:-500}" python3 benchmarks/ab.py ${AB_OLD:?set AB_OLD to the exported old kernels} ${AB_ARGS:-} \
        --out "$ab.md" > /dev/null 2> "$ab.log"
      tail -40 "$ab.md" ;;
    candidates)
      # the forward candidates on contiguous inputs, then channels-last (s2 fp32 anchors, s4, bf16,
      # fp16), then the backward candidate; each table keeps its finished rows at a time limit
      forwards="benchmarks/candidates/forward_nhwc benchmarks/candidates/forward_band"
      # shellcheck disable=SC2086  # two folders
      timeout 240 python3 benchmarks/ab.py $forwards --ops dlu_forward carafe_forward \
        --out "$OUT/ab-forward.md" > /dev/null 2> "$OUT/ab-forward.log"
      # shellcheck disable=SC2086
      timeout 120 python3 benchmarks/ab.py $forwards --ops dlu_forward carafe_forward --channels-last \
        --shapes 0 1 2 7 9 --out "$OUT/ab-forward-cl.md" > /dev/null 2> "$OUT/ab-forward-cl.log"
      timeout 240 python3 benchmarks/ab.py benchmarks/candidates/backward_fused --ops dlu_backward carafe_backward \
        --out "$OUT/ab-backward.md" > /dev/null 2> "$OUT/ab-backward.log"
      tail -n 30 "$OUT"/ab-forward.md "$OUT"/ab-forward-cl.md "$OUT"/ab-backward.md ;;
    sweep)
      timeout 300 python3 benchmarks/sweep_blocks.py 2>&1 | tee "$OUT/sweep.md" ;;
    props)
      # 6 tests (2 ops x 3 dtypes) x 4 seeds x 25 examples = 600 random cases (3.3-3.6 min on an H100;
      # 45 examples a seed ran past 300 s after other steps in the same call). One float16 DLU
      # example can take 8 s (a new shape compiles new kernels), so the seeds run side by side.
      for seed in 1 2 3 4; do
        DLU_TRITON_PROPERTY_EXAMPLES=25 timeout 300 python3 -m pytest tests/test_properties.py -n 3 -q -p no:cacheprovider \
          --hypothesis-seed=$seed --hypothesis-show-statistics > "$OUT/properties-$seed.log" 2>&1 &
      done
      wait
      grep -hE "passed|failed|passing" "$OUT"/properties-*.log ;;
    sanitize)
      # No caching allocator: an out-of-bounds access then leaves its allocation, where memcheck sees it.
      for tool in memcheck racecheck; do
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 170 compute-sanitizer --tool $tool --error-exitcode 9 --print-limit 20 \
          python3 -m pytest tests/kernels tests/test_ops.py tests/test_nonfinite.py -q -p no:cacheprovider \
          -k "cuda and not compile and not gradcheck" 2>&1 | tee "$OUT/sanitize-$tool.log" | tail -6
        echo "compute-sanitizer $tool exit: ${PIPESTATUS[0]}" | tee -a "$OUT/sanitize-$tool.log"
      done ;;
    profile)
      # "L2 Compression Input Sectors" (MemoryWorkloadAnalysis) counts L2 writes: compare with the
      # output's minimal sectors (docs/performance.md, forward v5 -> v6).
      timeout 120 ncu --clock-control none -k regex:"_reassemble|_mask_grad|_kernel_grad|_feature_grad" -c 5 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section LaunchStats --section Occupancy python3 benchmarks/profile_once.py > "$OUT/ncu.txt" 2>&1
      grep -E "^  _|Duration|Throughput|Registers Per|Achieved Occ|Compression Input" "$OUT/ncu.txt" ;;
    bench)
      timeout 350 python3 -m pytest benchmarks -q -p no:cacheprovider --benchmark-enable --benchmark-only \
        --benchmark-json="$OUT/benchmarks.json" --benchmark-columns=median,iqr,rounds 2>&1 | tail -4
      python3 benchmarks/summarise.py "$OUT/benchmarks.json" | tee "$OUT/benchmarks.md" ;;
  esac
done
