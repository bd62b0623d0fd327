#!/usr/bin/env bash
# The ban-list measurement of issue 40, in the order it was run (docs/results.md, "Phrase
# bans"): every command alone on the machine. From the repository root, after `make test`
# and `pip install -e '.[measure]'` and `pip install --no-deps backtrack-sampler==3.2.1`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
DATA=../shared/data
DEFAULT=$DATA/antislop/slop_phrase_prob_adjustments.json
FULL=$DATA/antislop/slop_phrase_prob_adjustments_full_list.json
OUT=results/bans
SMALL=qwen2.5-coder-0.5b-instruct
LARGE=qwen2.5-coder-1.5b-instruct

step=${1:-all}
run() { [[ $step == all || $step == "$1" ]]; }

if run bench; then
  $PY benchmarks/bench_bans.py | tee $OUT/bench.md
fi
if run "decode-$SMALL"; then
  $PY scripts/ban_quality.py decode --model $SMALL --out $OUT/$SMALL --list $DEFAULT --name default
  $PY scripts/ban_quality.py decode --model $SMALL --out $OUT/$SMALL --list $FULL --name full \
    --configs instruction,token-ban,bad-words,resample,ours-hard,ours-soft
fi
# The 1.5B decodes about 3x slower: in the session's time, one seed per prompt and the
# configurations that decide the question (LARGE_RUNS=3 for the full design).
if run "decode-$LARGE"; then
  $PY scripts/ban_quality.py decode --model $LARGE --out $OUT/$LARGE --list $DEFAULT --name default \
    --runs "${LARGE_RUNS:-1}" --configs none,token-ban,ours-hard,ours-soft
  $PY scripts/ban_quality.py decode --model $LARGE --out $OUT/$LARGE --list $FULL --name full \
    --runs "${LARGE_RUNS:-1}" --configs token-ban,ours-soft
fi
# Not run to the end: at about 1.8 tokens/s one configuration takes hours (docs/results.md).
if run peer; then
  $PY scripts/ban_peer.py --out $OUT/$SMALL --list $FULL --name full --probe | tee $OUT/peer-full-probe.txt || true
  $PY scripts/ban_peer.py --out $OUT/$SMALL --list $DEFAULT --name default --runs 1
fi
if run score; then
  # The 1.5B judge scores run 0 of each prompt (about 15 minutes); the rest is scored in full.
  $PY scripts/ban_scores.py score $OUT/$SMALL/records.jsonl --judge $LARGE --loglik-runs 1 \
    --list default=$DEFAULT --list full=$FULL
  $PY scripts/ban_scores.py score $OUT/$LARGE/records.jsonl --judge $SMALL \
    --list default=$DEFAULT --list full=$FULL
fi
if run report; then
  $PY scripts/ban_scores.py report $OUT/$SMALL $OUT/$LARGE --markdown $OUT/table.md \
    --plot $OUT/hits_vs_nonwords.png
fi
if run code; then
  BIAS=$($PY -c "
from transformers import AutoTokenizer
from backtrack.models.prepare import prepare_gguf
tok = AutoTokenizer.from_pretrained(str(prepare_gguf('$SMALL', progress=False)[1]))
calls = [c for c in open('$OUT/banned-calls.txt').read().splitlines() if c]
print({tok(v, add_special_tokens=False)['input_ids'][0]: -100
       for c in calls for v in (c, ' ' + c, '\t' + c)})")
  # Run 0 only was decoded in the session's time (CODE_RUNS=3 for the planned design).
  .venv/bin/backtrack eval humaneval --model $SMALL --backend llama.cpp --runs "${CODE_RUNS:-1}" \
    --batch-size 16 --max-new-tokens 384 --out $OUT/code --no-progress \
    --operator "never@ban_files=['calls=$OUT/banned-calls.txt']" \
    --operator "never@logit_bias=$BIAS"
  .venv/bin/backtrack report $OUT/code --markdown $OUT/code/table.md --plot $OUT/code/pass_at_1.png
  $PY scripts/ban_scores.py code $OUT/code --calls $OUT/banned-calls.txt --markdown $OUT/code/hits.md
fi
