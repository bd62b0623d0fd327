"""What the teacher's dense reward costs: LocalJudge reusing its cache against running every
prompt from scratch, side by side on the same judgements.

The judgements are the ones an RL episode asks for (``BacktrackEnv``): for recorded completions
of MBPP train problems (default: the operator search's base records), the program so far at
every line end and every ``--judge-every`` tokens, cut at the stop strings as the environment
cuts it. Two judges on two instances of the teacher take turns per episode, so machine load
hits both alike; both use no score cache, so every judgement is computed. Prints seconds and
prompt tokens per judgement and per episode, and the ratio.

    .venv/bin/python benchmarks/bench_judge.py --episodes 8
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from common import machine, rotated

from backtrack.evaluation.data import load_mbpp, mbpp_problems
from backtrack.evaluation.settings import default_generation
from backtrack.models import load_model
from backtrack.rl.env import judgement_due, partial_program
from backtrack.rl.judges import LocalJudge


def judgement_points(problem, completion: str, tokenizer, every: int) -> list[str]:
    """The partial programs the environment judges while this completion is written (its own
    rule and cut, replayed token by token without rollbacks)."""
    stop = default_generation().stop
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    points, judged = [], 0
    for n in range(1, len(ids) + 1):
        if judgement_due(tokenizer.decode(ids[n - 1 : n]), n, judged, every):
            points.append(partial_program(problem, tokenizer.decode(ids[:n]), stop))
            judged = n
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--backend", default="llama.cpp")
    ap.add_argument("--data-path", default="../shared/data/mbpp/mbpp_release_v1.jsonl")
    ap.add_argument("--records", default="studies/qwen2.5-coder-0.5b-instruct/train/results.jsonl")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--judge-every", type=int, default=16)
    args = ap.parse_args()

    problems = {p.task_id: p for p in mbpp_problems(load_mbpp(Path(args.data_path)), "train")}
    teachers = [load_model(args.teacher, backend=args.backend, progress=False) for _ in "ab"]
    tokenizer = teachers[0][1]
    episodes = []
    for line in Path(args.records).read_text().splitlines():
        record = json.loads(line)
        if record["config"] == "base" and record["task_id"] in problems:
            problem = problems[record["task_id"]]
            points = judgement_points(problem, record["completion"], tokenizer, args.judge_every)
            if len(points) >= 2:
                episodes.append((problem, points))
        if len(episodes) == args.episodes:
            break
    judges = {
        "from scratch": LocalJudge(*teachers[0], cache_size=0, reuse_prefix=False),
        "reusing the prefix": LocalJudge(*teachers[1], cache_size=0),
    }
    seconds: dict[str, float] = defaultdict(float)
    for index, (problem, points) in enumerate(episodes):
        for name in rotated(list(judges), index):
            started = time.perf_counter()
            for program in points:
                judges[name].score(problem.prompt, program)
            seconds[name] += time.perf_counter() - started

    count = sum(len(points) for _, points in episodes)
    print(f"machine: {machine()}, teacher {args.teacher} on "
          f"{args.backend}; {len(episodes)} MBPP train episodes, {count} judgements")  # fmt: skip
    print(f"{'judge':<20} {'s/judgement':>12} {'tokens/judgement':>17} {'s/episode':>10}")
    for name, judge in judges.items():
        print(
            f"{name:<20} {seconds[name] / count:>12.3f} "
            f"{judge.stats.prompt_tokens / count:>17.1f} {seconds[name] / len(episodes):>10.2f}"
        )
    ratio = seconds["from scratch"] / seconds["reusing the prefix"]
    print(f"reusing the prefix is {ratio:.2f}x faster per judgement")


if __name__ == "__main__":
    main()
