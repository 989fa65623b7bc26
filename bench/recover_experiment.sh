#!/usr/bin/env bash
# Recovery of a LUT4 model by discrete training, one run per vote rule (issue 5's experiment):
#
#   bench/recover_experiment.sh PRIMAL LUT4_MODEL DATA OUTDIR STEPS THREADS
#
# PRIMAL      the primal binary
# LUT4_MODEL  a LUT GGUF from `primal quantize` (e.g. ref-llama-code --format lut4 --grid iq4nl
#             --group 32)
# DATA        Python sources that are NOT the standard library (a folder, walked for *.py, e.g.
#             /usr/lib/python3/dist-packages), or a token file from `primal tokenize-data`
# OUTDIR      runs, logs and summary.md go here; finished pieces are skipped when re-run
# STEPS       optimizer steps per rule (each step: BATCH x SEQ tokens)
# THREADS     OpenMP threads for training and perplexity
#
# Measures `primal ppl -c 512` of TEXT (default python-stdlib-valid.txt; CHUNKS windows, default
# all) before and after each run. Environment overrides: SEQ (256), BATCH (4), RULES ("seed
# momentum"), SEED_FLAGS (default "--cooldown 10 --flip-cap 0.0005": cooldown and the governor
# apply to both rules, so they are set here, not as defaults of `primal train`) / MOMENTUM_FLAGS
# (extra `primal train` flags per rule; the rule knobs' defaults are the calibrated ones), TEXT, CHUNKS, EXTRA_FLAGS (all runs).
set -euo pipefail

PRIMAL=$(readlink -f "${1:?usage: recover_experiment.sh PRIMAL LUT4_MODEL DATA OUTDIR STEPS THREADS}")
MODEL=$(readlink -f "${2:?LUT4_MODEL}")
DATA=${3:?DATA}
OUT=${4:?OUTDIR}
STEPS=${5:?STEPS}
THREADS=${6:?THREADS}
SEQ=${SEQ:-256}
BATCH=${BATCH:-4}
RULES=${RULES:-seed momentum}
TEXT=${TEXT:-${PRIMAL_DATA:-/work/shared/data}/text/python-stdlib-valid.txt}
CHUNKS=${CHUNKS:--1}
SEED_FLAGS=${SEED_FLAGS:---cooldown 10 --flip-cap 0.0005}
MOMENTUM_FLAGS=${MOMENTUM_FLAGS:-}
EXTRA_FLAGS=${EXTRA_FLAGS:-}
mkdir -p "$OUT"

# Token file of the training data (tokenized once with the model's tokenizer).
if [ -d "$DATA" ]; then
  TOK=$OUT/data.tok
  if [ ! -s "$TOK" ]; then
    echo "tokenizing $DATA (*.py) -> $TOK"
    "$PRIMAL" tokenize-data "$DATA" --ext .py --tokenizer "$MODEL" -o "$TOK.tmp" -q
    mv "$TOK.tmp" "$TOK"
  fi
else
  TOK=$DATA
fi

# ppl FILE MODEL: `primal ppl -c 512` once; the result line is kept in FILE.
ppl() {
  if [ ! -s "$1" ]; then
    "$PRIMAL" ppl -m "$2" -f "$TEXT" -c 512 --chunks "$CHUNKS" -t "$THREADS" > "$1.log" 2>&1
    { grep "^Final estimate" "$1.log"; grep "^primal: scored" "$1.log"; } | tr '\n' ' ' > "$1"
  fi
  cat "$1"
}

echo "before: $(ppl "$OUT/ppl_before.txt" "$MODEL")"

for rule in $RULES; do
  run=$OUT/$rule
  flags=$SEED_FLAGS
  [ "$rule" = momentum ] && flags=$MOMENTUM_FLAGS
  if [ ! -s "$run/model.gguf" ]; then
    rm -rf "$run"
    echo "training: rule $rule, $STEPS steps of $BATCH x $SEQ tokens"
    # shellcheck disable=SC2086
    /usr/bin/time -v "$PRIMAL" train --model "$MODEL" --data "$TOK" --out "$run" --rule "$rule" --steps "$STEPS" \
      --seq "$SEQ" --batch "$BATCH" --threads "$THREADS" --eval-every 0 --checkpoint-every 0 -q \
      $EXTRA_FLAGS $flags > "$OUT/$rule.train.log" 2>&1
  fi
  echo "after $rule: $(ppl "$OUT/ppl_after_$rule.txt" "$run/model.gguf")"
done

# Summary: tokens, flips per step, tokens per second from metrics.jsonl (training rows only).
python3 - "$OUT" $RULES <<'PY' | tee "$OUT/summary.md"
import json, sys, os
out, rules = sys.argv[1], sys.argv[2:]
print("| rule | steps | tokens | flips/step (mean) | flip rate/step | train tok/s (mean) | eval loss first -> last | ppl after |")
print("|---|---|---|---|---|---|---|---|")
for r in rules:
    rows = [json.loads(l) for l in open(os.path.join(out, r, "metrics.jsonl"))]
    tr = [x for x in rows if "loss" in x and "eval_loss" not in x]
    ev = [x["eval_loss"] for x in rows if "eval_loss" in x]
    n = len(tr)
    ppl = open(os.path.join(out, f"ppl_after_{r}.txt")).read().strip()
    print(f"| {r} | {n} | {tr[-1]['tokens']} | {sum(x['flips'] for x in tr)/n:.0f} | "
          f"{sum(x['flip_rate'] for x in tr)/n:.2e} | {sum(x['tok_s'] for x in tr)/n:.0f} | "
          f"{ev[0]:.4f} -> {ev[-1]:.4f} | {ppl} |")
print()
print("before:", open(os.path.join(out, "ppl_before.txt")).read().strip())
PY
