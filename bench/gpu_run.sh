#!/bin/bash
# One call on the GPU machine: the gpu tests, the CLI's ppl on the whole text and its greedy text
# against the CPU's, then synthetic-model benchmarks, a short summary last. Expects the binaries
# beside it (primal, gpu_test_*) and the test data in $DATA (default .carry/data); writes logs and
# JSON under $OUT (few files: the device returns at most 8). Usage: bash gpu_run.sh [tests] [cli] [bench] [big] [profile]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PRIMAL_DATA_DIR=${DATA:-$PWD/.carry/data}
export PRIMAL_BIN="$HERE/primal"  # run_primal (the CLI tests) runs this copy
P="$HERE/primal"
WHAT=${*:-tests cli bench big}
has() { [[ " $WHAT " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.limit --format=csv | tee "$OUT/gpu.txt"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
TESTLOG="$OUT/tests.log"
if has tests; then
  # Every gpu test carried beside this script (inference ones first, then the trainer's).
  for f in "$HERE"/gpu_test_*; do
    t=$(basename "$f")
    [ -x "$f" ] || continue
    start=$(date +%s)
    echo "===== $t" >> "$TESTLOG"
    timeout 300 "$HERE/$t" >> "$TESTLOG" 2>&1
    rc=$?
    echo "$t rc=$rc $(( $(date +%s) - start ))s" | tee -a "$SUMMARY"
  done
  grep -E "^\[  (PASSED|FAILED)  \]|^\[  FAILED|logits vs CPU|GPU perplexity" "$TESTLOG" | tee -a "$SUMMARY"
  grep -E -A6 "Failure" "$TESTLOG" | head -60
fi
M=/tmp/models
D=$PRIMAL_DATA_DIR
if has cli; then
  Q8=$D/models/ref-llama-code/ref-llama-code-Q8_0.gguf
  # The whole text, as llama-perplexity -c 512 (6.4844 on the H100).
  CLI="$OUT/cli.log"
  ( time "$P" ppl -m "$Q8" -f "$D/text/python-stdlib-valid.txt" -c 512 --device cuda ) > /tmp/ppl_cuda.txt 2>&1
  grep -v "^\[" /tmp/ppl_cuda.txt >> "$CLI"
  grep -E "Final estimate|scored|real" /tmp/ppl_cuda.txt | tee -a "$SUMMARY"
  for dev in cuda cpu; do
    "$P" run -m "$Q8" -p 'import os
def main(' -n 64 --temp 0 --device $dev > /tmp/greedy_$dev.txt 2> /tmp/greedy_$dev.err
    { echo "===== run --device $dev"; cat /tmp/greedy_$dev.txt /tmp/greedy_$dev.err; } >> "$CLI"
  done
  if cmp -s /tmp/greedy_cuda.txt /tmp/greedy_cpu.txt; then echo "greedy 64 tokens: cuda == cpu" | tee -a "$SUMMARY"
  else echo "greedy 64 tokens: cuda != cpu" | tee -a "$SUMMARY"; diff /tmp/greedy_cuda.txt /tmp/greedy_cpu.txt | head; fi
fi
mkdir -p $M
BENCH="$OUT/bench.txt"
bench() {  # shape type
  local f=$M/$1-$2.gguf s=$(date +%s)
  "$P" synth --shape "$1" --type "$2" "$f" -q || { echo "synth $1 $2 failed" | tee -a "$SUMMARY"; rm -f "$f"; return; }
  echo "===== $1 $2 (synth $(( $(date +%s) - s ))s)" >> "$BENCH"
  timeout 240 "$P" bench -m "$f" -p 512 -n 128 -r 3 --json-out /tmp/bench.json >> "$BENCH" 2>&1
  echo "bench $1 $2 rc=$?" >> "$BENCH"
  cat /tmp/bench.json >> "$OUT/bench_json.txt" 2>/dev/null; rm -f /tmp/bench.json
  rm -f "$f"
  grep -E "pp512|tg128" "$BENCH" | tail -2 | tee -a "$SUMMARY"
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
  "$P" synth --shape qwen2.5-1.5b --type Q4_0 $M/p.gguf -q
  PRIMAL_CUDA_PROFILE=1 timeout 120 "$P" bench -m $M/p.gguf -p 512 -n 32 -r 1 > "$OUT/profile.txt" 2>&1
  rm -f $M/p.gguf
  tail -30 "$OUT/profile.txt"
fi
echo "===== summary"
cat "$SUMMARY"
