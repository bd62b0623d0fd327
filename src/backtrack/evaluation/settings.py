"""What ``backtrack eval`` is asked to do: the settings, the configurations, the seed rule.

Configurations: ``base`` is the ``never`` operator through our engine (always included);
every ``--operator SPEC`` is named by its spec; optional baselines: ``beam:N``
(transformers' ``model.generate`` on the transformers backend, the engine's beam search on
llama.cpp; deterministic: like every greedy configuration, decoded once in run 0 and copied to
the other runs with ``reused_from_run=0``) and ``hf-sample`` (``model.generate`` sampling,
seeded like ours; transformers only).

A configuration may also change generation settings for itself: ``SPEC@KEY=VALUE,...`` (any
of :data:`~backtrack.engine.settings.GENERATION_KEYS`, e.g.
``probability-trend@rollback_window=16`` or ``never@temperature=0``). The rest of the
evaluation's settings apply unchanged, so such a configuration is still paired with ``base``
on the same seeds: it measures exactly what the changed settings do.

Pairing and seeds: the seed of (run ``r``, problem ``i``) is ``seed + SEED_STRIDE * r + i`` where
``i`` is the problem's index in the *full* dataset (so it does not depend on ``--limit`` or
``--problems``), identical for every configuration. Configurations therefore differ only by the
operator, and comparisons against ``base`` are paired on the same seeds.

Baselines at equal compute (:mod:`~backtrack.evaluation.generation.filtering`):
``sample-filter:n=N`` draws up to N samples of base's decoding per cell, one after another,
and keeps the first that passes the prompt's visible examples (else the most likely);
``beam:N+filter`` keeps the best of the N final beams that passes them (else the best beam).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from backtrack.engine.settings import GENERATION_KEYS, GenerationConfig
from backtrack.evaluation.data import RECOMMENDED_TIMEOUT_S, dataset_key
from backtrack.evaluation.prompts import EVALPLUS_STOP
from backtrack.flags import option

BASE = "base"
SEED_STRIDE = 10_000  # > number of problems in any dataset we load (MBPP: 974)
# Named sets of settings for `eval --preset`. ``paper``, the paper's protocol (its sampling,
# completion mode), is what GenerationConfig and EvalSettings default to, so it changes
# nothing: the name stays for the commands in results/ READMEs that spell it out.
PRESETS: dict[str, Mapping[str, Any]] = {"paper": {}}


class EvalError(RuntimeError):
    """A usage problem (bad spec, meta mismatch, bad problem ids): the CLI exits with code 2."""


@dataclass(frozen=True)
class Configuration:
    """One decoding configuration: ``kind`` is ``engine``, ``beam``, ``hf-sample``,
    ``sample-filter`` or ``beam-filter``.

    ``spec`` is the operator spec; ``generation`` the settings this configuration changes
    (flat keys, see :meth:`GenerationConfig.updated`), as ``(key, value)`` pairs.
    """

    name: str
    kind: str
    spec: str
    beams: int = 1
    generation: tuple[tuple[str, Any], ...] = ()
    samples: int = 1  # sample-filter: the most samples drawn per cell

    @property
    def filtered(self) -> bool:
        """Whether candidates are filtered by the prompt's visible examples (sample-filter,
        beam:N+filter; :mod:`~backtrack.evaluation.generation.filtering`)."""
        return self.kind in ("sample-filter", "beam-filter")

    def generation_config(self, base: GenerationConfig) -> GenerationConfig:
        """``base`` with this configuration's own settings."""
        return base.updated(dict(self.generation)) if self.generation else base

    def deterministic(self, base: GenerationConfig) -> bool:
        """Whether every run gives the same completion, so one run is decoded and the others
        reuse it: beam search, or greedy decoding (a run's seed only feeds sampling; operators
        never see it, and the seeded ones draw from their own spec's seed)."""
        return self.kind in ("beam", "beam-filter") or self.generation_config(base).greedy


def split_configuration(text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """``"SPEC@KEY=VALUE,..."`` -> ``(SPEC, ((KEY, VALUE), ...))``; checks every key and value
    (:func:`backtrack.configurations.split_configuration`, its errors as EvalError).

    >>> split_configuration("probability-trend@rollback_window=16")
    ('probability-trend', (('rollback_window', 16),))
    """
    from backtrack import configurations

    try:
        return configurations.split_configuration(text)
    except configurations.ConfigurationError as exc:
        raise EvalError(str(exc)) from exc


def seed_for(base_seed: int, run: int, problem_index: int) -> int:
    """The seed of one (run, problem) cell, shared by every configuration (paired design)."""
    return base_seed + SEED_STRIDE * run + problem_index


def build_configurations(operators: Sequence[str], baselines: Sequence[str] = ()) -> list:
    """``base`` first, then each distinct operator spec, then the transformers baselines.

    Specs are parsed now so a typo fails before the model is loaded.
    """
    from backtrack.operators import OperatorSpecError, parse_operator

    configs = [Configuration(BASE, "engine", "never")]
    seen = {BASE, "never"}
    from backtrack.recipes import expand

    for name in operators:
        try:
            name = expand(name)  # records are named by what was decoded, not by the alias
        except ValueError as exc:
            raise EvalError(str(exc)) from exc
        spec, generation = split_configuration(name)
        try:
            parse_operator(spec)
        except OperatorSpecError as exc:
            raise EvalError(f"bad operator {spec!r}: {exc}") from exc
        if name in seen:
            continue
        seen.add(name)
        configs.append(Configuration(name, "engine", spec, generation=generation))
    for spec in baselines:
        config = parse_baseline(spec)
        if config.name not in seen:
            seen.add(config.name)
            configs.append(config)
    return configs


def _count(text: str, default: int, spec: str, usage: str) -> int:
    """``text`` as an integer >= 1 (``default`` when empty), else a one-line EvalError."""
    if not (text or str(default)).isdigit() or int(text or default) < 1:
        raise EvalError(f"bad baseline {spec!r}: use {usage} with N >= 1")
    return int(text or default)


def parse_baseline(spec: str) -> Configuration:
    """One ``--baseline`` spec: ``hf-sample``, ``beam:N``, ``beam:N+filter`` or
    ``sample-filter:n=N`` (defaults: 2 beams, 4 samples).

    >>> config = parse_baseline("sample-filter:n=3")
    >>> config.name, config.kind, config.spec, config.samples
    ('sample-filter:n=3', 'sample-filter', 'never', 3)
    >>> parse_baseline("beam:2+filter").kind
    'beam-filter'
    """
    spec = spec.strip()
    if spec == "hf-sample":
        return Configuration(spec, "hf-sample", spec)
    if spec.startswith("sample-filter"):
        # The samples are base's decoding (the never operator), so n=1 is base itself.
        head, _, n = spec.partition(":")
        key, eq, value = n.partition("=")
        if head != "sample-filter" or (n and (key.strip() != "n" or not value.strip())):
            raise EvalError(f"bad baseline {spec!r}: use sample-filter:n=N with N >= 1")
        samples = _count(value.strip(), 4, spec, "sample-filter:n=N")
        return Configuration(
            f"sample-filter:n={samples}", "sample-filter", "never", samples=samples
        )
    if spec.startswith("beam"):
        body, plus, suffix = spec.partition("+")
        if plus and suffix != "filter":
            raise EvalError(f"bad baseline {spec!r}: use beam:N or beam:N+filter with N >= 1")
        head, _, n = body.partition(":")
        if head != "beam":
            raise EvalError(f"bad baseline {spec!r}: use beam:N or beam:N+filter with N >= 1")
        beams = _count(n, 2, spec, "beam:N+filter" if plus else "beam:N")
        if plus:
            return Configuration(f"beam:{beams}+filter", "beam-filter", spec, beams)
        return Configuration(f"beam:{beams}", "beam", spec, beams)
    raise EvalError(
        f"unknown baseline {spec!r}; use beam:N, beam:N+filter, sample-filter:n=N or hf-sample"
    )


def default_generation(mode: str = "completion") -> GenerationConfig:
    """The evaluation's decoding defaults: GenerationConfig's (the paper's sampling), with the
    EvalPlus stop strings in completion mode (chat replies are cut by code extraction, so chat
    mode gets none)."""

    stop = EVALPLUS_STOP if mode == "completion" else ()
    return GenerationConfig(stop=tuple(stop))


# The settings that say how to load the model, as backtrack.models.load_model takes them: also
# the loading flags of generate and serve (cli.options.loading_options).
LOADING_KEYS = ("dtype", "device", "quantize", "backend", "threads", "n_ctx")


@dataclass
class EvalSettings:
    """Everything ``backtrack eval`` was asked to do (stored in meta.json).

    ``generation`` holds every decoding setting (sampling, length, stop strings, period, ban,
    retry cap, budget) exactly as the engine takes them; each cell's seed is added by the
    runner (see :func:`seed_for`). ``None`` takes :func:`default_generation` for ``mode``.
    Fields declared with :func:`~backtrack.flags.option` are ``backtrack eval``'s flags.
    """

    model: str
    out: str
    operators: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    dataset: str = "humaneval"
    data_path: str | None = option(None, "Data file (all but humaneval).")
    split: str | None = option(
        None, "MBPP split: train|validation|test|prompt (default test, 11-510)."
    )
    # MBPP: keep only the first N of the prompt's ">>>" tests visible (data.hide_examples),
    # so a decoder that runs the prompt's examples never sees the rest; None: the prompt as is.
    visible_tests: int | None = option(
        None,
        "MBPP: show only the first N of the prompt's tests (scored on all); for decoders that "
        "run the prompt's examples (examples, sample-filter).",
    )
    runs: int = option(1, "Sampling runs (seeds) per problem.")
    generation: GenerationConfig = None  # type: ignore[assignment]  # filled in __post_init__
    seed: int = option(0, "Seed of (run r, problem i) = S + 10000 r + i.")
    problems: str | None = option(None, "Problem ids, e.g. 0,5-7.")
    limit: int | None = option(None, "Only the first N problems.")
    mode: str = option("completion", "completion|chat.")
    dtype: str = option("auto", "auto|bfloat16|float16|float32")
    device: str = option("auto", "auto|cpu|cuda")
    quantize: str | None = option(None, "int8 (CPU: dynamic int8; CUDA: 8-bit)")
    # transformers | llama.cpp | auto: llama.cpp for GGUF models on the CPU when llama-cpp-python
    # is installed (2.9x faster there; docs/benchmarks.md), else transformers.
    backend: str = option(
        "auto",
        "transformers|llama.cpp|auto (auto: llama.cpp for GGUF models on the CPU, when installed).",
    )
    # From benchmarks/bench_vs_generate.py on 2 cores (docs/benchmarks.md): B=32 gave 3.9x the
    # tokens/s of B=1 and 1.15x B=16 for the default model, at 4.7 MiB of KV cache per row.
    batch_size: int = option(32, "Rows decoded together (BatchDecoder); 1: the single engine.")
    workers: int = option(2, "Programs executed in parallel.")
    # llama.cpp's CPU threads (None: every core) and tokens per sequence (None: its default).
    # How fast, not what is decoded, so a resumed run may change them (not in META_KEYS).
    threads: int | None = option(None, "llama.cpp: CPU threads (default: every core).")
    n_ctx: int | None = option(None, "llama.cpp: tokens per sequence (default 4096).")
    timeout_s: float | None = option(
        None, "Sandbox seconds per program (default: the dataset's).", flag="--timeout"
    )
    force: bool = option(False, "Resume even if meta.json differs.")
    ray: str | None = option(
        None, "Decode on Ray actors: local (start one here), auto, or an address."
    )  # distributed.py
    ray_actors: int = option(2, "Ray actors, one model each.")

    def __post_init__(self) -> None:
        if self.generation is None:
            self.generation = default_generation(self.mode)
        is_mbpp = dataset_key(self.dataset) in ("mbpp", "mbpp+")
        if self.split is None and is_mbpp:
            self.split = "test"  # MBPP/11..510, the MBPP paper's test split
        elif self.split is not None and not is_mbpp:
            raise EvalError(f"--split is for MBPP and MBPP+; {self.dataset} has no splits")
        if self.visible_tests is not None:
            if dataset_key(self.dataset) != "mbpp":
                raise EvalError("--visible-tests is for MBPP (its prompts show every test)")
            if self.visible_tests < 0:
                raise EvalError(f"--visible-tests must be >= 0, got {self.visible_tests}")

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> EvalSettings:
        """Settings from one flat mapping: the generation keys (``temperature``, ``top_k``,
        ``stop``, ``max_discarded_tokens``...) on top of :func:`default_generation` for the
        mode, everything else as fields. ``stop=None`` keeps the mode's default stop strings."""
        values = dict(values)
        flat = {k: values.pop(k) for k in GENERATION_KEYS if k in values}
        if flat.get("stop", ()) is None:
            del flat["stop"]
        base = default_generation(values.get("mode", "completion"))
        try:
            values["generation"] = base.updated(flat)
        except (TypeError, ValueError) as exc:
            raise EvalError(str(exc)) from exc
        return cls(**values)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], **changes: Any) -> EvalSettings:
        """The settings an evaluation's meta.json records, with ``changes`` (fields or flat
        generation keys): to extend or repeat that evaluation with the same settings. A
        setting the meta.json predates takes its default."""
        names = {f.name for f in fields(cls)} - {"generation", "force"}
        values = {k: meta[k] for k in (*names, *GENERATION_KEYS) if k in meta}
        if "backend" not in meta:  # recorded since there is a choice; before, transformers
            values["backend"] = meta.get("backend_resolved", "transformers")
        return cls.from_flat({**values, **changes})

    def loading(self) -> dict[str, Any]:
        """How to load the model (:data:`LOADING_KEYS`), as ``load_model``'s keywords."""
        return {key: getattr(self, key) for key in LOADING_KEYS}

    @classmethod
    def declared(cls, name: str) -> Mapping[str, Any]:
        """The declaration of a flag field (``help``, ``flag``), see
        :func:`backtrack.flags.option`."""
        (found,) = [f for f in fields(cls) if f.name == name]
        return found.metadata

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default, the one place the CLI's options take theirs from."""
        (found,) = [f for f in fields(cls) if f.name == name]
        if found.default is MISSING:
            raise KeyError(f"EvalSettings.{name} has no default")
        return found.default

    def resolved_timeout(self) -> float:
        if self.timeout_s is not None:
            return float(self.timeout_s)
        return RECOMMENDED_TIMEOUT_S.get(dataset_key(self.dataset), 3.0)
