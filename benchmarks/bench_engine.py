"""Engine overhead and operator cost, measured side by side in one run.

1. Tokens/s of our engine with the no-op operator divided by tokens/s of ``model.generate`` on
   the same model, prompts, seeds and sampling settings (both produce the same tokens, so the
   ratio is a pure loop-cost comparison). Runs alternate A/B per prompt to cancel drift.
2. The per-step cost of each operator in microseconds, on step records from a real generation.

    .venv/bin/python benchmarks/bench_engine.py --model qwen2.5-coder-0.5b-instruct --prompts 6
    # with the learned operator's cost too (an LSTM step per token), side by side with the
    # same policy called through sb3's `predict` (what the operator did before):
    .venv/bin/python benchmarks/bench_engine.py --operators-only \
        --policy policies/qwen2.5-coder-0.5b-instruct/policy.zip
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import machine

from backtrack.engine import Decoder, GenerationConfig
from backtrack.evaluation.data import humaneval_prompts
from backtrack.models import load_model
from backtrack.operators import Never, Operator, parse_operator
from backtrack.operators.learned import LearnedOperator, _frozen

OPERATOR_SPECS = [
    "never",
    "probability-threshold",
    "entropy-threshold",
    "probability-margin",
    "probability-drop",
    "probability-trend",
    "repetition",
    "ngram-overlap",
    "logit-threshold",
    "probability-trend+repetition",
]


def time_generate(model, ids: list[int], seed: int, max_new: int, t: float, k: int):
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(
        torch.tensor([ids]),
        do_sample=True,
        temperature=t,
        top_k=k,
        max_new_tokens=max_new,
        min_new_tokens=max_new,  # both sides generate exactly max_new tokens
    )
    return out.shape[1] - len(ids), time.perf_counter() - start


class Collect(Operator):
    name = "collect"

    def __init__(self):
        self.steps = []

    def __call__(self, step):
        self.steps.append(step)
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policy", default=None, help="also time rl:path=POLICY (needs [rl])")
    ap.add_argument(
        "--operators-only", action="store_true", help="skip the engine/generate comparison"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model, dtype=args.dtype)
    dtype = next(model.parameters()).dtype
    decoder = Decoder(model, tok)
    prompts = humaneval_prompts(args.prompts)
    # The project's sampling (GenerationConfig's defaults) on both sides. min_new_tokens in
    # generate suppresses EOS; do the same for ours so both emit n tokens.
    n = args.max_new_tokens
    cfg = GenerationConfig(max_new_tokens=n, eos_token_ids=[])
    t, k = cfg.temperature, cfg.top_k

    # Warm-up (first calls allocate).
    ids0 = tok(prompts[0], add_special_tokens=False)["input_ids"]
    time_generate(model, ids0, 0, 4, t, k)
    decoder.generate(ids0, Never(), cfg, max_new_tokens=4)

    ours_tok = ours_s = hf_tok = hf_s = 0.0
    per_prompt = []
    for i, prompt in enumerate([] if args.operators_only else prompts):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        order = ("hf", "ours") if i % 2 == 0 else ("ours", "hf")
        r = {}
        for who in order:
            if who == "hf":
                r["hf"] = time_generate(model, ids, 1000 + i, n, t, k)
            else:
                start = time.perf_counter()
                res = decoder.generate(ids, Never(), cfg, seed=1000 + i)
                r["ours"] = (len(res.token_ids), time.perf_counter() - start)
        hf_tok += r["hf"][0]
        hf_s += r["hf"][1]
        ours_tok += r["ours"][0]
        ours_s += r["ours"][1]
        per_prompt.append((r["ours"][0] / r["ours"][1]) / (r["hf"][0] / r["hf"][1]))

    print(f"machine: {machine()}, threads={args.threads}")
    print(f"model: {args.model} ({dtype}), {len(prompts)} HumanEval prompts, {n} new tokens")
    print(f"sampling: temperature={t}, top_k={k}; A/B order alternates per prompt")
    print()
    if per_prompt:
        print(f"model.generate : {hf_tok / hf_s:7.2f} tok/s")
        print(f"engine, never  : {ours_tok / ours_s:7.2f} tok/s")
        ratio = (ours_tok / ours_s) / (hf_tok / hf_s)
        median = statistics.median(per_prompt)
        print(f"ratio engine/generate: {ratio:.3f} (per-prompt median {median:.3f})")
        print()

    # Operator cost per step, on real step records.
    collect = Collect()
    decoder.generate(ids0, collect, cfg, seed=7)
    steps = collect.steps
    print(f"operator cost per call ({len(steps)} real steps, median of 5 passes):")
    for spec in OPERATOR_SPECS:
        print(f"  {spec:32s} {per_call_us(parse_operator(spec), steps, 5):8.2f} us")
    if args.policy:
        # The learned operator and its peer, the same policy through sb3's `predict`, in
        # alternating passes on the same steps.
        direct = parse_operator(f"rl:path={args.policy}")
        peer = ViaPredict(args.policy)
        times: dict[str, list[float]] = {"direct": [], "predict": []}
        for _ in range(5):
            times["direct"].append(per_call_us(direct, steps, 1))
            times["predict"].append(per_call_us(peer, steps, 1))
        a, b = statistics.median(times["direct"]), statistics.median(times["predict"])
        print(f"  {'rl (network called directly)':32s} {a:8.2f} us")
        print(f"  {'rl through sb3 predict (peer)':32s} {b:8.2f} us")
        print(f"  ratio direct/predict: {a / b:.3f}")
    collect = Collect()
    start = time.perf_counter()
    decoder.generate(ids0, collect, cfg, seed=7)
    per_token_ms = (time.perf_counter() - start) / len(collect.steps) * 1e3
    print(f"(one decoding step of this model takes {per_token_ms:.1f} ms)")


def per_call_us(op: Operator, steps: list, passes: int) -> float:
    """Median over ``passes`` of the mean cost of one call, state snapshot included."""
    samples = []
    for _ in range(passes):
        op.reset()
        start = time.perf_counter()
        for step in steps:
            op.set_state(op.get_state())  # the engine snapshots state every step
            op(step)
        samples.append((time.perf_counter() - start) / len(steps) * 1e6)
    return statistics.median(samples)


class ViaPredict(LearnedOperator):
    """The learned operator as it was: each step through sb3's generic ``predict``."""

    def _act(self, observation, lstm, episode_start, deterministic):
        action, state = self.model.predict(
            observation,
            state=lstm,
            episode_start=np.array([episode_start]),
            deterministic=deterministic,
        )
        return int(np.asarray(action).reshape(())), (_frozen(state[0]), _frozen(state[1]))


if __name__ == "__main__":
    main()
