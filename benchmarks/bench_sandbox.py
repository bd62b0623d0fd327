"""What the sandbox's private filesystem costs per program, side by side in one run.

Runs the same HumanEval programs (canonical solutions, which pass) alternately with the full
isolation this host supports (``unshare --mount --net --pid``, private /tmp, read-only rest)
and with the same isolation minus the mount namespace, which is what the sandbox had before
it, and prints the median time per program of each and their difference and ratio.

    .venv/bin/python benchmarks/bench_sandbox.py --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from common import machine, rotated

from backtrack.evaluation.data import load_humaneval
from backtrack.evaluation.prompts import program_for
from backtrack.execution import sandbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    full = sandbox.detect_isolation()
    if not full.mount_namespace:
        raise SystemExit("this host has no mount namespaces: nothing to compare")
    without_mount = dataclasses.replace(
        full, prefix=tuple(a for a in full.prefix if a != "--mount"), mount_namespace=False
    )
    programs = [program_for(p, p.canonical_solution) for p in load_humaneval()[: args.problems]]
    times: dict[str, list[float]] = {"private filesystem": [], "without mount namespace": []}
    variants = [("private filesystem", full), ("without mount namespace", without_mount)]
    for round_ in range(args.rounds):
        for name, isolation in rotated(variants, round_):
            sandbox.detect_isolation = lambda isolation=isolation: isolation
            for program in programs:
                start = time.perf_counter()
                result = sandbox.run_program(program)
                times[name].append(time.perf_counter() - start)
                assert result.passed and result.sandbox.filesystem == isolation.mount_namespace
    # machine() imports torch: only now, after the timings, so that no program is spawned
    # from a process holding it.
    print(f"{machine()}, {args.problems} programs x "
          f"{args.rounds} rounds, alternating")  # fmt: skip
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:>24}: median {1000 * median:.1f} ms per program")
    extra = medians["private filesystem"] - medians["without mount namespace"]
    ratio = medians["private filesystem"] / medians["without mount namespace"]
    print(f"private filesystem costs {1000 * extra:+.1f} ms per program (x{ratio:.3f})")


if __name__ == "__main__":
    main()
