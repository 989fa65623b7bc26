#!/usr/bin/env bash
# LUT quality table: quantize ref-llama-code (HF folder, BF16) into every LUT format x grid x group,
# score each with `primal ppl -c 512` on python-stdlib-valid.txt, print a markdown table.
#
#   bench/lut_quality.sh PRIMAL OUTDIR [CHUNKS]
#
# CHUNKS: windows scored per model (-1 or omitted = the whole file; 60 is a quick slice).
# Resumable: each configuration's result is a line of OUTDIR/rows.tsv and is skipped when present
# (delete the line, or the file, to measure again). Models are kept in OUTDIR/models, logs in
# OUTDIR/logs. Environment:
#   CONFIGS   newline-separated configurations "FORMAT GRID GROUP [extra quantize flags]" to run
#             instead of the default sweep below (e.g. CONFIGS="lut4 nf4 32")
#   MODEL     HF folder or GGUF to quantize (default: ref-llama-code from /work/shared/data)
#   TEXT      text scored (default: python-stdlib-valid.txt)
#   CALIB     calibration text for --mixed / --act-aware / --gptq configurations
#             (default: wikitext-2-valid.tokens: out of domain for a code model, but no overlap
#             with the scored text)
set -euo pipefail

PRIMAL=${1:?usage: lut_quality.sh PRIMAL OUTDIR [CHUNKS]}
OUT=${2:?usage: lut_quality.sh PRIMAL OUTDIR [CHUNKS]}
CHUNKS=${3:--1}
DATA=${PRIMAL_DATA:-/work/shared/data}
MODEL=${MODEL:-$DATA/models/ref-llama-code}
TEXT=${TEXT:-$DATA/text/python-stdlib-valid.txt}
CALIB=${CALIB:-$DATA/text/wikitext-2-valid.tokens}
PRIMAL=$(readlink -f "$PRIMAL")
mkdir -p "$OUT/models" "$OUT/logs"
ROWS=$OUT/rows.tsv
touch "$ROWS"

default_configs() {
  # Most informative first, so that an interrupted sweep still answers the targets. "ref LABEL
  # FILE" rows score a model as it is (the float checkpoint, llama.cpp's own quantizations) on the
  # same windows, so that a slice compares like with like.
  echo "ref bf16 $MODEL"
  echo "ref Q8_0 $(dirname "$MODEL")/ref-llama-code/ref-llama-code-Q8_0.gguf"
  echo "ref Q4_K_M $(dirname "$MODEL")/ref-llama-code/ref-llama-code-Q4_K_M.gguf"
  echo "lut8 uniform 32"
  echo "lut4 iq4nl 32"
  echo "lut4+gptq iq4nl 32 --gptq"
  echo "lut4+act-aware iq4nl 32 --act-aware"
  for g in prime nf4; do echo "lut4 $g 32"; done
  for g in nf4 prime; do echo "lut8 $g 32"; done
  for g in learned uniform; do echo "lut4 $g 32"; done
  echo "lut8 learned 32"
  for g in iq4nl nf4 prime uniform learned; do echo "lut4 $g 64"; done
  echo "lut4 iq4nl 128"  # refused on this model: ffn_down rows are 704 = 5.5 x 128
  for g in iq4nl nf4 prime uniform learned; do echo "lut4 $g row"; done
  for G in 64 row; do for g in uniform nf4 prime learned; do echo "lut8 $g $G"; done; done
  for w in lut3 lut2; do for g in nf4 uniform prime learned; do echo "$w $g 32"; done; done
  for g in uniform nf4 prime; do echo "lut16 $g row"; done
  echo "mixed4.0 nf4 64 --mixed 4.0"
}

CONFIGS=${CONFIGS:-$(default_configs)}

while read -r fmt grid group extra; do
  [ -z "$fmt" ] && continue
  key="$fmt $grid $group"
  grep -q -F -x -e "$key" <(cut -f1-3 "$ROWS" | tr '\t' ' ') && continue
  name="${fmt}_${grid}_g${group}"
  [ "$fmt" = ref ] && name="ref_$grid"
  model=$OUT/models/$name.gguf
  log=$OUT/logs/$name.log
  qfmt=$fmt
  flags=()
  if [ -n "${extra:-}" ]; then
    read -r -a flags <<<"$extra"
    flags+=(--calib "$CALIB")
  fi
  # A label "lut4+NAME" is lut4 with the extra flags; "mixedBITS" lets --mixed choose the widths.
  case $fmt in mixed*) qfmt=lut4 ;; *+*) qfmt=${fmt%%+*} ;; esac
  echo "== $key ${extra:-}" >&2
  if [ "$fmt" = ref ]; then
    model=$group
    [ -e "$model" ] || { echo "skipping $key: no such model" >&2; continue; }
  elif ! "$PRIMAL" quantize "$MODEL" "$model" --format "$qfmt" --grid "$grid" --group "$group" "${flags[@]}" \
       >"$log" 2>&1; then
    why=$(grep -m1 'primal: error' "$log" | sed 's/^primal: error: //; s/\t/ /g' | cut -c1-200)
    printf '%s\t%s\t%s\t-\t-\t-\t-\t-\trefused: %s\n' "$fmt" "$grid" "$group" "$why" >>"$ROWS"
    continue
  fi
  bits=$("$PRIMAL" inspect "$model" 2>/dev/null | grep -m1 'bits per weight' || true)
  bpw=$(sed -E 's/.* ([0-9.]+) bits per weight.*/\1/' <<<"${bits:-?}")
  lbpw=$(sed -E 's/.*linear layers ([0-9.]+).*/\1/' <<<"${bits:-?}")
  start=$(date +%s)
  "$PRIMAL" ppl -m "$model" -f "$TEXT" -c 512 --chunks "$CHUNKS" >>"$log" 2>&1
  secs=$(( $(date +%s) - start ))
  fin=$(grep -m1 'Final estimate' "$log")
  ppl=$(sed -E 's/.*PPL = ([0-9.]+).*/\1/' <<<"$fin")
  err=$(sed -E 's/.*\+\/- ([0-9.]+).*/\1/' <<<"$fin")
  n=$(grep -m1 -oE 'in [0-9]+ windows' "$log" | grep -oE '[0-9]+')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$fmt" "$grid" "$group" "$bpw" "$lbpw" "$ppl" "$err" "$n" "${secs}s" \
    >>"$ROWS"
done <<<"$CONFIGS"

echo "| format | grid | group | file bits/weight | linear bits/weight | ppl ± err | windows | note |"
echo "|---|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r fmt grid group bpw lbpw ppl err n note; do
  if [ "$ppl" = "-" ]; then
    echo "| $fmt | $grid | $group | - | - | - | - | $note |"
  else
    [ "$fmt" = ref ] && group=-
    echo "| $fmt | $grid | $group | $bpw | $lbpw | $ppl ± $err | $n | |"
  fi
done <"$ROWS"
