#!/bin/bash
# One call on the GPU machine: the gpu tests, then synthetic-model benchmarks, a short table last.
# Expects the binaries beside it (primal, gpu_test_*) and the test data in $DATA (default
# .carry/data); writes logs under $OUT. Usage: bash gpu_run.sh [tests] [bench] [profile] [big]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PRIMAL_DATA_DIR=${DATA:-$PWD/.carry/data}
WHAT=${*:-tests bench}
has() { [[ " $WHAT " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
if has tests; then
  for t in gpu_test_device gpu_test_ops_cuda gpu_test_gemv_cuda gpu_test_forward_cuda; do
    [ -x "$HERE/$t" ] || continue
    start=$(date +%s)
    timeout 400 "$HERE/$t" > "$OUT/$t.log" 2>&1
    rc=$?
    echo "$t rc=$rc $(( $(date +%s) - start ))s $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/$t.log" | tr '\n' ' ')" | tee -a "$SUMMARY"
    grep -E "Failure|FAILED  \]|error:|Expected|Which is|GPU perplexity" "$OUT/$t.log" | head -40
  done
fi
M=/tmp/models
mkdir -p $M
bench() {  # shape type
  local f=$M/$1-$2.gguf
  [ -f "$f" ] || "$HERE/primal" synth --shape "$1" --type "$2" "$f" -q || { echo "synth $1 $2 failed" | tee -a "$SUMMARY"; return; }
  timeout 300 "$HERE/primal" bench -m "$f" -p 512 -n 128 -r 3 > "$OUT/bench-$1-$2.txt" 2>&1
  echo "bench $1 $2 rc=$?" >> "$OUT/bench-$1-$2.txt"
  grep -E "pp512|tg128|floor|error" "$OUT/bench-$1-$2.txt" | tee -a "$SUMMARY"
}
if has bench; then
  for t in Q4_0 Q8_0 F16; do bench qwen2.5-1.5b $t; done
  bench llama2-7b Q4_0
fi
if has big; then
  bench llama2-7b Q8_0
  bench llama2-7b F16
fi
if has profile; then
  PRIMAL_CUDA_PROFILE=1 timeout 120 "$HERE/primal" bench -m $M/qwen2.5-1.5b-Q4_0.gguf -p 512 -n 32 -r 1 > "$OUT/profile-q15-q4_0.txt" 2>&1
  tail -30 "$OUT/profile-q15-q4_0.txt"
fi
echo "===== summary"
cat "$SUMMARY"
