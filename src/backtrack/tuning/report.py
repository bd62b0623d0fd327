"""The study's report: ``summary.md``, ``summary.json`` and the plots (Optuna's history and
importances, the Pareto plots on MBPP train and on MBPP validation), and the records they are
made of (:class:`Score`, :class:`Candidate`, :class:`TrialValidation`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from backtrack.tuning.settings import TuneSettings
from backtrack.tuning.space import recipe_params


@dataclass(frozen=True)
class Score:
    """A recipe's pass@1 and paired gain over base on some cells (points, 95% CI)."""

    gain: float
    low: float
    high: float
    pass_at_1: float
    base_pass_at_1: float
    forward_per_token: float
    problems: int
    runs: int

    @property
    def interval(self) -> str:
        """The gain with its CI, as every table and message writes it: ``+3.3 [-4.4, +11.1]``."""
        return f"{self.gain:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


@dataclass(frozen=True)
class Candidate:
    """A completed, feasible trial of the search, and its score on validation."""

    number: int
    recipe: str
    train_gain: float
    train_forward_per_token: float
    validation: Score | None = None
    # Against plain decoding at the recipe's own temperature: what the operator adds beyond
    # the temperature (the objective, a gain over T=0.5 sampling, rewards a lower one too).
    over_plain: Score | None = None


@dataclass(frozen=True)
class TrialValidation:
    """One recipe of the search on MBPP validation, and the trials that tried it."""

    trials: tuple[int, ...]
    states: tuple[str, ...]
    recipe: str
    validation: Score
    over_plain: Score | None = None  # see Candidate.over_plain


def write_summary(
    settings: TuneSettings,
    study,
    validated: Sequence[Candidate] = (),
    every_trial: Sequence[TrialValidation] = (),
) -> Path:
    """``summary.md`` (every finished trial; the validated ones with their CI; every trial on
    validation, if measured), ``summary.json`` and the plots (Optuna's history and importances,
    the Pareto plots on train and on validation) in the study folder.

    Without ``validated`` or ``every_trial``, those of an earlier call (in summary.json) are
    kept: a search resumed after a selection does not lose them."""
    out = Path(settings.out)
    if not validated:
        validated = _earlier_validation(out / "summary.json")
    if not every_trial:
        every_trial = _earlier_every_trial(out / "summary.json")
    lines = [
        f"# Study {settings.study}: {settings.model}, MBPP train {list(settings.rungs)}",
        "",
        "Gain: paired pass@1 over base (temperature 0.5, top-k 50) on the same problems and "
        f"seeds, points. Constraint: at most {settings.max_forward_per_token} forward passes per "
        "accepted token.",
        "",
    ]
    if validated:
        lines += [
            "## Validated on MBPP validation (511-600)",
            "",
            "| trial | recipe | gain [95% CI] | pass@1 | base | vs plain at its temperature "
            "[95% CI] | fwd/token | problems x runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in validated:
            v, p = c.validation, c.over_plain
            assert v is not None
            versus = "-" if p is None else p.interval
            lines.append(
                f"| {c.number} | `{c.recipe}` | {v.interval} | "
                f"{v.pass_at_1:.1f} | {v.base_pass_at_1:.1f} | {versus} | "
                f"{v.forward_per_token:.2f} | {v.problems} x {v.runs} |"
            )
        lines += [
            "",
            "*vs plain at its temperature*: the same recipe against plain decoding at its own "
            "temperature (greedy for 0): what the operator adds beyond the temperature.",
        ]
        lines.append("")
    if every_trial:
        lines += [
            "## Every trial on MBPP validation (511-600)",
            "",
            "| trials | states | recipe | gain [95% CI] | pass@1 | vs plain at its temperature "
            "[95% CI] | fwd/token | problems x runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for e in every_trial:
            v, p = e.validation, e.over_plain
            versus = "-" if p is None else p.interval
            lines.append(
                f"| {', '.join(map(str, e.trials))} | {', '.join(e.states)} | `{e.recipe}` | "
                f"{v.interval} | {v.pass_at_1:.1f} | {versus} | "
                f"{v.forward_per_token:.2f} | {v.problems} x {v.runs} |"
            )
        lines += ["", "Plot: `pareto_validation.png`.", ""]
    lines += [
        "## Search (MBPP train)",
        "",
        "| trial | state | recipe | gain | problems | fwd/token |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "recipe" not in t.user_attrs:
            continue
        last = max(t.intermediate_values.items(), default=(None, None))
        gain = t.value if t.value is not None else last[1]
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "recipe": t.user_attrs["recipe"],
                "gain": gain,
                "problems": t.user_attrs.get("problems"),
                "forward_per_token": t.user_attrs.get("forward_per_token"),
            }
        )
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | `{t.user_attrs['recipe']}` | "
            f"{'-' if gain is None else f'{gain:+.1f}'} | {t.user_attrs.get('problems', '-')} | "
            f"{t.user_attrs.get('forward_per_token', float('nan')):.2f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    payload = {
        "study": settings.study,
        "trials": rows,
        "validated": [
            {
                **c.__dict__,
                "validation": c.validation.__dict__ if c.validation else None,
                "over_plain": c.over_plain.__dict__ if c.over_plain else None,
            }
            for c in validated
        ],
    }
    payload["every_trial_validation"] = [
        {
            **e.__dict__,
            "validation": e.validation.__dict__,
            "over_plain": e.over_plain.__dict__ if e.over_plain else None,
        }
        for e in every_trial
    ]
    (out / "summary.json").write_text(json.dumps(payload, indent=1))
    _plots(study, rows, out, settings.max_forward_per_token)
    if every_trial:
        _validation_pareto(every_trial, out / "pareto_validation.png", settings)
    return out / "summary.md"


def _earlier_validation(path: Path) -> list[Candidate]:
    try:
        entries = json.loads(path.read_text()).get("validated") or []
        return [
            Candidate(
                e["number"], e["recipe"], e["train_gain"], e["train_forward_per_token"],
                Score(**e["validation"]) if e.get("validation") else None,
                Score(**e["over_plain"]) if e.get("over_plain") else None,
            )
            for e in entries
        ]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []  # none yet, or a summary from an older version: rewritten below


def _earlier_every_trial(path: Path) -> list[TrialValidation]:
    try:
        entries = json.loads(path.read_text()).get("every_trial_validation") or []
        return [
            TrialValidation(
                tuple(e["trials"]), tuple(e["states"]), e["recipe"], Score(**e["validation"]),
                Score(**e["over_plain"]) if e.get("over_plain") else None,
            )
            for e in entries
        ]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _validation_pareto(points: Sequence[TrialValidation], path: Path, settings) -> None:
    """Gain over base on MBPP validation (95% CI) against forward passes per token, one point
    per recipe the search tried, labelled with its trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in points:
        v = e.validation
        ax.errorbar(
            v.forward_per_token,
            v.gain,
            yerr=[[v.gain - v.low], [v.high - v.gain]],
            fmt="o" if "complete" in e.states else "^",
            capsize=3,
        )
        temperature = recipe_params(e.recipe)["temperature"]
        ax.annotate(
            f"#{','.join(map(str, e.trials))} T={temperature:g}",
            (v.forward_per_token, v.gain),
            fontsize=7,
            xytext=(5, 3),
            textcoords="offset points",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(settings.max_forward_per_token, color="grey", ls="--", lw=0.8)
    problems = max(e.validation.problems for e in points)
    runs = max(e.validation.runs for e in points)
    ax.set_xlabel("forward passes per accepted token (MBPP validation)")
    ax.set_ylabel("pass@1 gain over base (points, 95% CI)")
    ax.set_title(
        f"every recipe the search tried, on MBPP validation ({problems} x {runs}); "
        "o: a complete trial, ^: pruned or stopped; dashed: the constraint",
        fontsize=8,
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _plots(study, rows: list[dict], out: Path, max_forward: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Optuna's plots switch matplotlib to its ggplot style for the whole process; the context
    # puts the defaults back for our own charts (pareto.png, pareto_validation.png).
    with matplotlib.rc_context():
        if complete:
            ax = oplt.plot_optimization_history(study)
            ax.figure.savefig(out / "history.png", dpi=120, bbox_inches="tight")
            plt.close(ax.figure)
        if len(complete) >= 2:
            try:
                with warnings.catch_warnings():  # "few trials per regime" early in a study
                    warnings.simplefilter("ignore")
                    ax = oplt.plot_param_importances(study)
                ax.figure.savefig(out / "importances.png", dpi=120, bbox_inches="tight")
                plt.close(ax.figure)
            except (RuntimeError, ValueError):  # too few distinct parameter values yet
                pass
    points = [r for r in rows if r["gain"] is not None and r["forward_per_token"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        # Interrupted trials (state fail) still scored their subsets: shown, and marked.
        kinds = (("complete", "o", "complete"), ("pruned", "x", "pruned"), ("fail", "^", "stopped"))
        for state, marker, label in kinds:
            chosen = [r for r in points if r["state"] == state]
            if not chosen:
                continue
            ax.scatter(
                [r["forward_per_token"] for r in chosen],
                [r["gain"] for r in chosen],
                marker=marker,
                label=f"{label} ({len(chosen)})",
            )
            for r in chosen:  # gains on different subsets: say which
                ax.annotate(
                    f"#{r['trial']} ({r['problems']})",
                    (r["forward_per_token"], r["gain"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(max_forward, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("forward passes per accepted token")
        ax.set_ylabel("pass@1 gain over base (points, MBPP train)")
        ax.set_title("every trial: #number (problems scored); dashed: the constraint", fontsize=9)
        ax.legend()
        fig.savefig(out / "pareto.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
