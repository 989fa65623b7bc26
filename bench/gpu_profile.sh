#!/bin/bash
# Per-kernel decode profile on the GPU machine: Nsight Compute's duration and DRAM throughput of
# two decode steps (graph nodes), for the qwen2.5-1.5B and llama2-7B shapes at the given types,
# plus primal's own eager per-op timing. Writes ncu-<shape>-<type>.csv and profile.txt under $OUT.
# Usage: bash gpu_profile.sh [TYPE...]   (default Q4_0)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}
P="$HERE/primal"
M=/tmp/models
mkdir -p "$M" "$OUT"
TYPES=${*:-Q4_0}
for t in $TYPES; do
  for shape in qwen2.5-1.5b llama2-7b; do
    f=$M/$shape-$t.gguf
    "$P" synth --shape $shape --type $t "$f" -q || continue
    [ $shape = qwen2.5-1.5b ] && PRIMAL_CUDA_PROFILE=1 "$P" bench -m "$f" -p 512 -n 32 -r 1 >> "$OUT/profile.txt" 2>&1
    # 1 + 171 kernels per decode step for qwen (28 layers), 1 + 195 for llama2-7b (32): skip the
    # eager and captured warm-up steps, keep two graph replays' worth.
    L=$([ $shape = qwen2.5-1.5b ] && echo 28 || echo 32)
    K=$(( 6 * L + 3 ))
    timeout 200 ncu --clock-control none --graph-profiling node \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size,launch__registers_per_thread \
      --launch-skip $(( 3 * K + 2 )) --launch-count $(( 2 * K )) --csv --page raw \
      "$P" bench -m "$f" -p 0 -n 6 -r 1 > "$OUT/ncu-$shape-$t.csv" 2> "$OUT/ncu-$shape-$t.err"
    tail -3 "$OUT/ncu-$shape-$t.err"
    rm -f "$f"
  done
done
tail -40 "$OUT/profile.txt"
