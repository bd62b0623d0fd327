#!/usr/bin/env bash
# The paper's protocol on one GPU: HumanEval, 164 problems x 100 runs, base vs probability
# trend, temperature 0.5, top-k 50, completion prompts, default model, in one call.
#
# Sizing (an estimate, NOT measured: no GPU was lent to the session that wrote it): 32,800
# generations of ~100 accepted tokens. With --batch-size 256 the batched engine runs one
# forward pass for all rows (a 0.5B model is far from compute-bound at that size on an H100);
# the per-row Python work (sampling statistics, operator, detokenizer) is then the bottleneck,
# roughly 0.2-0.4 ms per row-step, i.e. ~60-100 ms per step for 256 rows -> 2,500-4,000 tok/s,
# ~15-20 minutes. Sandbox execution (32,800 programs, 16 workers) overlaps with decoding.
# To fit 10 minutes, start with --runs 40 (and resume with --runs 100 in a second call: the
# result directory is resumable and the seeds do not depend on the run count).
#
# Usage on the GPU machine (the model cache can be carried as $BACKTRACK_CACHE):
#   bash benchmarks/gpu_paper_protocol.sh [RUNS] [OUT]
set -euo pipefail
runs="${1:-100}"
out="${2:-results/gpu-paper}"
.venv/bin/backtrack eval humaneval --model qwen2.5-coder-0.5b-instruct --device cuda \
  --dtype bfloat16 --preset paper --operator probability-trend --runs "$runs" \
  --max-new-tokens 384 --batch-size 256 --workers 16 --out "$out" --no-progress
.venv/bin/backtrack report "$out" --markdown "$out/table.md" --plot "$out/fig.png"
