#!/usr/bin/env bash
# The HumanEval measurements quoted in docs/results.md (default model, CPU). Resumable: re-run to
# continue after an interruption.
set -euo pipefail
bt=.venv/bin/backtrack
model=qwen2.5-coder-0.5b-instruct
# 1. Greedy pass@1 over all 164 problems (what the model can really do with this harness).
$bt eval humaneval --model "$model" --backend transformers --temperature 0 --runs 1 --max-new-tokens 384 \
  --batch-size 16 --out results/humaneval-greedy --no-progress
# 2. The paper's protocol: temperature 0.5, top-k 50, completion prompts; base vs trend.
$bt eval humaneval --model "$model" --backend transformers --preset paper --operator probability-trend --runs 3 \
  --max-new-tokens 384 --batch-size 16 --out results/humaneval-paper --no-progress
# 3. Beam search with 2 beams, added to the same directory (deterministic: decoded in run 0).
$bt eval humaneval --model "$model" --backend transformers --preset paper --operator probability-trend \
  --baseline beam:2 --runs 3 --max-new-tokens 384 --batch-size 16 \
  --out results/humaneval-paper --no-progress
# 4. The learned operator shipped in policies/ (trained on MBPP train only, see its README), as
#    trained (sampled actions) and as the operator's default (most likely action), added to
#    the same directory: same problems, same seeds.
policy=policies/qwen2.5-coder-0.5b-instruct/policy.zip
$bt eval humaneval --model "$model" --backend transformers --preset paper --operator probability-trend \
  --operator "rl:path=$policy,deterministic=false" --operator "rl:path=$policy" \
  --baseline beam:2 --runs 3 \
  --max-new-tokens 384 --batch-size 16 --out results/humaneval-paper --no-progress
