#!/usr/bin/env bash
# The main job (`make demo`): a quick, honest comparison on the default model.
# The first 20 HumanEval problems x 2 sampled runs, the paper's sampling (temperature 0.5,
# top-k 50, completion prompts), base (plain sampling through the same engine) vs the
# probability-trend operator, batched on the CPU. About 10 minutes on 2 cores, plus about a
# minute the first time to assemble, verify and convert the packaged model. Resumable.
# A 20-problem sample is small: 1-3 passes of difference is noise (see docs/results.md for the full runs).
set -euo pipefail
out="${1:-runs/demo}"
bin=.venv/bin
$bin/backtrack models
echo
$bin/backtrack eval humaneval --model qwen2.5-coder-0.5b-instruct --preset paper \
  --operator probability-trend --limit 20 --runs 2 --max-new-tokens 384 --batch-size 16 \
  --out "$out"
$bin/backtrack report "$out" --markdown "$out/table.md" --plot "$out/pass_at_1.png"
echo
echo "table: $out/table.md   plots: $out/pass_at_1.png"
