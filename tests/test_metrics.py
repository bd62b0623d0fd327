"""pass@k, bootstrap CIs, paired comparisons and throughput against hand-computed values.

Float comparisons use ``pytest.approx``'s default (relative 1e-6) against hand-computed
fractions: the code computes them in float64, whose rounding (1e-16 relative) is the same on
every IEEE-754 CPU, so the default is already a wide margin; bootstrap intervals are seeded.
"""

from __future__ import annotations

import math

import pytest

from backtrack.evaluation.reporting import metrics


def _records(config: str, table: dict[str, list[int]]) -> list[dict]:
    """Expand {task: [passed per run]} into flat records."""
    return [
        {"config": config, "run": run, "task_id": task, "passed": bool(ok)}
        for task, outcomes in table.items()
        for run, ok in enumerate(outcomes)
    ]


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (5, 0, 1, 0.0),
        (5, 5, 3, 1.0),
        (4, 2, 3, 1.0),  # n - c < k: every k-subset holds a correct sample
    ],
)
def test_pass_at_k_matches_combinatorics(n: int, c: int, k: int, expected: float) -> None:
    assert metrics.pass_at_k(n, c, k) == pytest.approx(expected)
    if n - c >= k:
        assert metrics.pass_at_k(n, c, k) == pytest.approx(
            1 - math.comb(n - c, k) / math.comb(n, k)
        )


def test_pass_at_k_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        metrics.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        metrics.pass_at_k(3, 1, 4)


def test_mean_pass_at_k() -> None:
    assert metrics.mean_pass_at_k([(5, 2), (5, 5)], 1) == pytest.approx(0.7)


def test_mean_pass1_point_estimate_and_ci() -> None:
    records = _records("a", {"t1": [1, 1], "t2": [1, 0]})
    est = metrics.mean_pass1(records, "a", resamples=500)
    assert est.mean == pytest.approx(0.75)
    assert (est.n_problems, est.n_runs) == (2, 2)
    assert 0.25 <= est.low <= est.mean <= est.high <= 1.0


def test_bootstrap_ci_on_a_two_problem_toy() -> None:
    """One run, outcomes [1, 0]: resampled means are 0, 0.5, 1 with prob 1/4, 1/2, 1/4."""
    est = metrics.mean_pass1(_records("a", {"t1": [1], "t2": [0]}), "a", resamples=4000)
    assert (est.mean, est.low, est.high) == (0.5, 0.0, 1.0)


def test_bootstrap_is_seeded_and_degenerate_when_constant() -> None:
    records = _records("a", {"t1": [1, 0, 1], "t2": [0, 0, 1], "t3": [1, 1, 1]})
    assert metrics.mean_pass1(records, "a", seed=3) == metrics.mean_pass1(records, "a", seed=3)
    all_pass = metrics.mean_pass1(_records("a", {"t1": [1, 1], "t2": [1, 1]}), "a")
    assert (all_pass.low, all_pass.high) == (1.0, 1.0)


def test_missing_or_duplicate_cells_are_errors() -> None:
    records = _records("a", {"t1": [1, 1], "t2": [1]})
    with pytest.raises(ValueError, match="missing"):
        metrics.mean_pass1(records, "a")
    with pytest.raises(ValueError, match="duplicate"):
        metrics.mean_pass1(records + records, "a")
    with pytest.raises(ValueError, match="no records"):
        metrics.mean_pass1(records, "b")


def test_paired_comparison_gains_losses_and_difference() -> None:
    base = _records("base", {"t1": [1, 1], "t2": [0, 0], "t3": [1, 0]})
    conf = _records("bt", {"t1": [1, 1], "t2": [1, 1], "t3": [0, 0]})
    result = metrics.compare(base + conf, "bt", "base", resamples=1000)
    assert result.baseline_mean == pytest.approx(3 / 6)
    assert result.config_mean == pytest.approx(4 / 6)
    assert result.diff.mean == pytest.approx(1 / 6)
    assert result.gained == ["t2"] and result.lost == ["t3"]
    assert result.diff.low <= result.diff.mean <= result.diff.high


def test_paired_ci_is_zero_for_identical_outcomes() -> None:
    table = {"t1": [1, 0], "t2": [0, 1], "t3": [1, 1]}
    result = metrics.compare(_records("x", table) + _records("y", table), "x", "y")
    assert (result.diff.mean, result.diff.low, result.diff.high) == (0.0, 0.0, 0.0)
    assert result.gained == [] and result.lost == []


def test_comparison_needs_the_same_problems_and_runs() -> None:
    base = _records("base", {"t1": [1, 1], "t2": [0, 0]})
    with pytest.raises(ValueError, match="runs differ"):
        metrics.compare(base + _records("bt", {"t1": [1], "t2": [0]}), "bt", "base")
    with pytest.raises(ValueError):
        metrics.compare(base + _records("bt", {"t1": [1, 1], "t9": [0, 0]}), "bt", "base")


def test_throughput_helpers() -> None:
    assert metrics.accepted_tokens_per_s([100, 50], [2.0, 1.0]) == pytest.approx(50.0)
    assert metrics.forward_passes_per_token([120, 60], [100, 50]) == pytest.approx(1.2)
    assert metrics.ratio_to_baseline(50.0, 25.0) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        metrics.accepted_tokens_per_s([1], [0.0])
    with pytest.raises(ValueError):
        metrics.forward_passes_per_token([1], [0])
