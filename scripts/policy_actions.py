"""How often would a trained policy delete? Its action probabilities along plain decodes.

    .venv/bin/python scripts/policy_actions.py policies/qwen2.5-coder-0.5b-instruct/policy.zip \
        --split validation --problems 20

Decodes MBPP problems (never HumanEval) with plain sampling (the probe never deletes) and asks
the policy at every token for its full action distribution, carrying its LSTM memory exactly as
the rl operator does. Prints the mean probability of each action, and the share of tokens where
the most likely action is a deletion: with ``deterministic=true`` (the operator's default) the
policy deletes only there, with ``deterministic=false`` it deletes with the printed probability.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from backtrack.engine.decoder import Decoder
from backtrack.engine.results import Step
from backtrack.engine.settings import GenerationConfig
from backtrack.evaluation.data import load_mbpp, mbpp_problems
from backtrack.evaluation.prompts import DEFAULT_STOP, build_prompt
from backtrack.models import load_model
from backtrack.operators.base import Operator
from backtrack.operators.learned import LearnedOperator


class Probe(Operator):
    """Records the policy's action distribution at every token and never deletes."""

    name = "probe"

    def __init__(self, policy: LearnedOperator) -> None:
        self.policy = policy
        self.probs: list[np.ndarray] = []
        self.token_probs: list[float] = []  # probability of the sampled token, per step
        self.texts: list[str] = []

    def initial_state(self):
        return self.policy.initial_state()

    def __call__(self, step: Step) -> int:
        features, (h, c), start, _ = self.state
        observation, _ = self.policy.extractor.features(step, features)
        net = self.policy.model.policy
        with torch.no_grad():
            dist, _ = net.get_distribution(
                torch.as_tensor(observation).reshape(1, -1),
                (torch.tensor(np.array(h)), torch.tensor(np.array(c))),
                torch.as_tensor([float(start)]),
            )
        self.probs.append(dist.distribution.probs[0].numpy().copy())
        self.token_probs.append(float(step.prob))
        self.texts.append(step.text)
        self.policy.state = self.state
        self.policy(step)  # advances features and LSTM memory exactly as the operator does
        self.state = self.policy.state
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy")
    ap.add_argument("--data-path", default="../shared/data/mbpp/mbpp_release_v1.jsonl")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--backend", default="transformers", help="transformers or llama.cpp")
    args = ap.parse_args()

    policy = LearnedOperator(args.policy)
    model_name = policy.metadata.get("model", "qwen2.5-coder-0.5b-instruct")
    model, tokenizer = load_model(model_name, backend=args.backend)
    decoder = Decoder(model, tokenizer)
    problems = mbpp_problems(load_mbpp(args.data_path), args.split, drop_broken=True)
    probe = Probe(policy)
    # The policy's own training settings (its metadata), with this script's length and stops;
    # what its metadata leaves out, GenerationConfig's defaults.
    trained = {k: v for k, v in policy.trained_generation().items() if k != "max_new_tokens"}
    config = GenerationConfig.from_flat(
        {**trained, "max_new_tokens": args.max_new_tokens, "stop": DEFAULT_STOP}
    )
    for i, problem in enumerate(problems[: args.problems]):
        decoder.generate(build_prompt(problem, "completion"), probe, config, seed=i)
    probs = np.stack(probe.probs)
    mean = probs.mean(axis=0)
    argmax_deletes = float((probs.argmax(axis=1) > 0).mean())
    p_delete = 1.0 - probs[:, 0]
    print(f"{args.policy}: {len(probs)} tokens of {args.problems} MBPP {args.split} problems")
    print("mean P(action=k): " + ", ".join(f"{k}: {p:.4f}" for k, p in enumerate(mean)))
    print(
        f"P(delete) per token: mean {p_delete.mean():.4f}, median {np.median(p_delete):.4f}, "
        f"p99 {np.quantile(p_delete, 0.99):.4f}, max {p_delete.max():.4f}"
    )
    print(f"tokens where the most likely action deletes (deterministic=true): {argmax_deletes:.4f}")
    # Where: P(delete) against the probability of the token just sampled, and the tokens it
    # would most like to delete.
    token_probs = np.array(probe.token_probs)
    print("P(delete) by the sampled token's probability:")
    for lo, hi in ((0.0, 0.1), (0.1, 0.3), (0.3, 0.7), (0.7, 1.01)):
        inside = (token_probs >= lo) & (token_probs < hi)
        if inside.any():
            print(
                f"  p in [{lo:.1f}, {min(hi, 1.0):.1f}): {inside.sum():5d} tokens, "
                f"mean P(delete) {p_delete[inside].mean():.4f}, "
                f"argmax deletes {(probs[inside].argmax(axis=1) > 0).mean():.4f}"
            )
    ends_line = np.array(["\n" in t for t in probe.texts])
    for name, mask in (("tokens ending a line", ends_line), ("other tokens", ~ends_line)):
        if mask.any():
            print(f"  {name}: {mask.sum()} tokens, mean P(delete) {p_delete[mask].mean():.4f}")
    print("highest P(delete): sampled token (its probability) -> P(delete)")
    for i in np.argsort(-p_delete)[:8]:
        print(f"  {probe.texts[i]!r} ({token_probs[i]:.3f}) -> {p_delete[i]:.3f}")


if __name__ == "__main__":
    main()
