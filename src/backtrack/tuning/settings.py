"""What ``backtrack tune`` was asked to do (:class:`TuneSettings`), and the evaluation settings
each of its decodings runs under.

A module of its own so that the search (:mod:`~backtrack.tuning.study`) and its report
(:mod:`~backtrack.tuning.report`) both read the settings without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtrack.engine.settings import GenerationConfig
from backtrack.evaluation.settings import EvalSettings
from backtrack.flags import option
from backtrack.tuning.space import SEARCHED, recipe_params

DEFAULT_RUNGS = (40, 120, 374)
MAX_FORWARD_PER_TOKEN = 1.15


@dataclass
class TuneSettings:
    """What ``backtrack tune`` was asked to do (the fields declared with
    :func:`~backtrack.flags.option` are its flags).

    Attributes:
        out: the study's folder: ``study.db`` (unless ``storage`` is given), ``train/`` and
            ``validation/`` result directories, the summary and the plots.
        study: the Optuna study name. storage: an Optuna storage URL (default: SQLite in out).
        model, backend, dtype, batch_size: how to decode (see ``backtrack eval``).
        data_path: MBPP (``mbpp_release_v1.jsonl``).
        trials: trials to run in this invocation (a resumed study adds to what it has).
        rungs: growing numbers of train problems a trial is scored on.
        operators: operator names the search may use (default: all).
        seed: the sampler's seed (TPE) and the evaluation's seed.
        max_forward_per_token: the constraint.
        max_new_tokens: completion length (MBPP solutions are short, so shorter than the
            engine's default).
        generation: other generation settings every trial decodes with (flat keys; the
            searched ones, temperature, period and ban, cannot be fixed).
        visible_tests: MBPP tests left visible in the prompt (the rest hidden, all scored).
    """

    out: str
    data_path: str
    model: str = "qwen2.5-coder-0.5b-instruct"
    study: str = option("backtrack", "Optuna study name.")
    storage: str | None = option(None, "Optuna storage URL (default: sqlite in --out).")
    # How to load the model: eval's declarations (help and default).
    backend: str = option(EvalSettings.default("backend"), EvalSettings.declared("backend")["help"])
    dtype: str = option(EvalSettings.default("dtype"), EvalSettings.declared("dtype")["help"])
    batch_size: int = option(16, "Rows decoded together.")
    trials: int = option(20, "Trials to run now (a study resumes).")
    rungs: Sequence[int] = DEFAULT_RUNGS
    operators: Sequence[str] | None = None
    seed: int = option(0, "Seed of the TPE sampler and of the cells.")
    max_forward_per_token: float = option(
        MAX_FORWARD_PER_TOKEN, "Constraint: forward passes per accepted token."
    )
    max_new_tokens: int = 384
    # MBPP prompts show every test; for operators that run the prompt's examples the search
    # shows only the first (EvalSettings.visible_tests), scoring on all. None: as given.
    visible_tests: int | None = option(
        1, "MBPP tests left visible in the prompt (the rest hidden, all scored)."
    )
    workers: int = 2
    # Decode every trial on one Ray pool (evaluation.generation.distributed).
    ray: str | None = option(None, "Decode on Ray actors: local, auto, or an address.")
    ray_actors: int = option(2, "Ray actors, one model each.")
    # Recipes (``Recipe.name`` spelling) to try first, e.g. plain greedy as an anchor that
    # tells a temperature's gain from an operator's; each is enqueued once per study.
    enqueue: Sequence[str] = ()
    generation: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rungs or list(self.rungs) != sorted(set(self.rungs)) or self.rungs[0] < 1:
            raise ValueError(f"rungs must be increasing positive counts, got {list(self.rungs)}")
        if self.trials < 0 or self.batch_size < 1:
            raise ValueError("trials must be >= 0 and batch_size >= 1")
        for name in self.enqueue:
            recipe_params(name)  # a bad recipe fails here, before any model loads
        generation = dict(self.generation)
        if "max_new_tokens" in generation:  # the flag, if given, is the search's length
            self.max_new_tokens = generation.pop("max_new_tokens")
        fixed = sorted(set(generation) & set(SEARCHED))
        if fixed:
            raise ValueError(f"the search chooses {', '.join(fixed)}; do not fix them")
        GenerationConfig().updated(generation)  # checks every value before any model loads
        self.generation = generation

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"

    def eval_settings(
        self, split: str, operators: Sequence[str], limit: int | None, runs: int = 1
    ) -> EvalSettings:
        return EvalSettings.from_flat(
            {
                "model": self.model,
                "out": str(Path(self.out) / split),
                "operators": list(operators),
                "dataset": "mbpp",
                "data_path": self.data_path,
                "split": split,
                "visible_tests": self.visible_tests,
                "runs": runs,
                "limit": limit,
                "seed": self.seed,
                "backend": self.backend,
                "dtype": self.dtype,
                "batch_size": self.batch_size,
                "workers": self.workers,
                "max_new_tokens": self.max_new_tokens,
                **self.generation,
                "ray": self.ray,
                "ray_actors": self.ray_actors,
            }
        )
