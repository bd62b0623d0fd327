"""Phrase bans: what the matcher costs per token as the list grows, and what a ban list costs
a whole decode, side by side with decoding without bans.

1. The matcher (no model): a list of the first N phrases of the antislop full list, and text
   arriving a token (about 4 characters) at a time, searched as a session searches it. Ours
   (one Aho-Corasick automaton, the new text only) against the alternative it replaced (one
   ``regex`` alternation of every phrase, searched in full and for a partial match after every
   token), and the time to read and compile each list.
2. Decoding (the default model on llama.cpp, creative-writing prompts in the chat template):
   no bans, against the antislop default list banned outright and the full list as soft bans
   (whole words, any case), at batch 1 and at a batch, each prompt with several seeds (so a
   batch refills as rows finish, and its tokens per second are not those of its slowest row
   alone); round-robin rounds, tokens/s paired per round.

    python benchmarks/bench_bans.py                       # both parts
    python benchmarks/bench_bans.py --matcher-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import Measured, machine, paired_ratio, print_table, run_rounds

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FULL = DATA / "antislop" / "slop_phrase_prob_adjustments_full_list.json"
DEFAULT = DATA / "antislop" / "slop_phrase_prob_adjustments.json"
PROMPTS = DATA / "writing" / "eqbench_creative_writing_prompts_v2.json"
# Text a model writes, in the shape the matcher sees it: a token's few characters at a time.
TEXT = (
    "The old lighthouse keeper watched the storm roll in from the west, his hands steady on "
    "the rail. Somewhere below, the sea whispered against the rocks, a sound he had known for "
    "forty years. He thought of the letters in the drawer, unopened, and of the woman who had "
    "written them. Tomorrow, he told himself. Tomorrow he would read them all. "
) * 3
CHARS_PER_TOKEN = 4


def matcher_costs(sizes: list[int], repeats: int) -> None:
    import regex

    from backtrack.engine.banned import Bans, PhraseSet

    rows = json.loads(FULL.read_text())
    print("| phrases | ours: compile s | ours: ms/token | regex: compile s | regex: ms/token "
          "| regex / ours |\n|---|---|---|---|---|---|")  # fmt: skip
    for size in sizes:
        factors = {p: f for p, f in rows[:size]}
        start = time.perf_counter()
        bans = Bans([PhraseSet("full", factors, ignore_case=True)], whole_words=True)
        ours_compile = time.perf_counter() - start
        start = time.perf_counter()
        alternation = "|".join(regex.escape(p) for p in factors)
        pattern = regex.compile(rf"\b(?:{alternation})\b", regex.IGNORECASE)
        regex_compile = time.perf_counter() - start
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(_per_token(lambda text, seen, b=bans: b.scan(text, 0, new_from=seen)))
            theirs.append(_per_token(lambda text, seen, p=pattern: _regex_scan(p, text)))
        mine, other = statistics.median(ours), statistics.median(theirs)
        print(f"| {size:,} | {ours_compile:.3f} | {mine * 1e3:.3f} | {regex_compile:.2f} | "
              f"{other * 1e3:.3f} | {other / mine:.0f}x |", flush=True)  # fmt: skip


def _regex_scan(pattern, text: str) -> None:
    """What the matcher before issue 40 did after every token: a full search, then a partial
    one (its hold-back)."""
    if pattern.search(text) is None:
        pattern.search(text, partial=True)


def _per_token(scan) -> float:
    """Seconds per token of ``scan(text so far, length already seen)`` over :data:`TEXT`, the
    text growing a token at a time (searched from 200 characters back, as text becomes final)."""
    start, steps, seen = time.perf_counter(), 0, 0
    for end in range(CHARS_PER_TOKEN, len(TEXT), CHARS_PER_TOKEN):
        window = TEXT[max(0, end - 200) : end]
        scan(window, min(seen, len(window)))
        seen = len(window)
        steps += 1
    return (time.perf_counter() - start) / steps


def decode_costs(args: argparse.Namespace) -> None:
    from backtrack import load_model
    from backtrack.engine import Decoder, GenerationConfig
    from backtrack.engine.batch import BatchDecoder

    model, tokenizer = load_model("qwen2.5-coder-0.5b-instruct", backend="llama.cpp",
                                  threads=args.threads)  # fmt: skip
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": item["writing_prompt"].replace("<SEED>", "")}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for item in json.loads(PROMPTS.read_text()).values()
    ][: args.prompts]
    prompts = [text for text in texts for _ in range(args.seeds)]
    ban = dict(ban_whole_words=True, banned_ignore_case=True)
    configurations = {
        "no bans": {},
        "default list, hard": {**ban, "ban_files": [f"default={DEFAULT}"], "ban_hard": True},
        "full list, soft": {**ban, "ban_files": [f"full={FULL}"]},
    }
    base = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)

    def job(settings: dict, batch_size: int, label: str, count: int | None = None):
        chosen = prompts[:count] if count else prompts
        budget = {"max_new_tokens": 8} if count else {}

        def run() -> Measured:
            configs = [base.updated({**settings, **budget}) for _ in chosen]
            requests = [(p, None, c) for p, c in zip(chosen, configs, strict=True)]
            requests = [(p, o, _seeded(c, i)) for i, (p, o, c) in enumerate(requests)]
            start = time.perf_counter()
            if batch_size == 1:
                decoder = Decoder(model, tokenizer)
                results = [decoder.generate(p, o, c) for p, o, c in requests]
            else:
                results = BatchDecoder(model, tokenizer).generate_all(requests, batch_size)
            wall = time.perf_counter() - start
            tokens = sum(len(r.token_ids) for r in results)
            passes = sum(r.counts.forward_passes for r in results)
            return Measured(label, len(results), tokens, wall, passes / tokens)

        return run

    for batch_size in args.batch_sizes:
        print(f"\nbatch size {batch_size}, {len(prompts)} requests ({len(texts)} prompts x "
              f"{args.seeds} seeds), {args.max_new_tokens} tokens")  # fmt: skip
        jobs = [(f"{name} B={batch_size}", job(s, batch_size, f"{name} B={batch_size}"))
                for name, s in configurations.items()]  # fmt: skip
        # Not measured: allocates the contexts and compiles the lists.
        job(configurations["full list, soft"], batch_size, "warm-up", count=batch_size)()
        rounds = run_rounds(jobs, args.rounds)
        against = jobs[0][0]
        print_table(
            ["tok/s vs no bans"],
            [(label, [r[label] for r in rounds], [paired_ratio(rounds, label, against)])
             for label, _ in jobs],
        )  # fmt: skip


def _seeded(config, seed: int):
    from dataclasses import replace

    return replace(config, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matcher-only", action="store_true")
    parser.add_argument("--sizes", default="100,1000,8000,50046")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3, help="Requests per prompt.")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    matcher_costs([int(s) for s in args.sizes.split(",")], args.repeats)
    if not args.matcher_only:
        decode_costs(args)


if __name__ == "__main__":
    main()
