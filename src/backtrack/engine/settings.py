"""Every decoding setting, declared once: :class:`GenerationConfig` and its :class:`Budget`.

Each field carries its declaration as metadata (:class:`Setting`): its bounds, the value a
protocol spells "off" with, a one-line help text, its command-line flag and where an HTTP
request carries it. Everything that exposes settings is built from these declarations and
restates nothing:

- the config itself, which validates every field against its bounds;
- the command-line options shared by ``generate``, ``eval`` and ``tune``
  (:func:`backtrack.cli.options.generation_options`);
- the server's request fields and their bounds (:mod:`backtrack.serving.protocol`);
- the flat form that settings files, ``meta.json``, recipes (``SPEC@KEY=VALUE``) and the flags
  spell a config in (:data:`GENERATION_KEYS`, :meth:`GenerationConfig.to_flat`);
- :func:`config_from_given`, the one function that turns given values (flags, a request's
  fields) into a config.

Adding a setting is one field here, with its :func:`setting` declaration, plus what it does in
the engine and its tests; ``tests/test_settings_declared.py`` walks every field and checks that
the CLI, the server and the evaluation expose it with the same default and bounds.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from backtrack.engine.banlists import build_bans
from backtrack.engine.banned import Bans
from backtrack.engine.declaration import UNSET, Declared, parse_logit_bias, setting

# The most alternatives a call may ask for per token (OpenAI's chat limit).
MAX_TOP_LOGPROBS = 20
# The rollback window streaming uses when the config sets none (the server's default): text
# trails decoding by at most this many tokens. Its cost in pass@1 is measured in
# docs/results.md ("What a rollback window costs").
INTERACTIVE_ROLLBACK_WINDOW = 32

BanPolicy = Literal["accumulate", "next", "none"]


@dataclass(frozen=True)
class Budget:
    """Bounds on the extra work backtracking may cause in one generation.

    ``None`` means "derive from ``max_new_tokens``": at most ``max_new_tokens`` discarded tokens
    and ``2 * max_new_tokens`` forward passes, so the worst case costs at most twice the forward
    passes of plain decoding. Once any bound is reached, decoding continues without backtracking.

    Attributes:
        max_backtracks: rollbacks allowed per generation (``None``: no limit of their own).
        max_discarded_tokens: tokens that rollbacks may delete in total.
        max_forward_passes: hard cap on forward passes (the prefill counts as one); decoding
            stops with ``finish_reason="budget"`` if it is reached before another stop.
    """

    max_backtracks: int | None = setting(None, "Budget: rollbacks per generation.", ge=0)
    max_discarded_tokens: int | None = setting(
        None, "Budget: tokens rollbacks may delete.", ge=0, flag="--max-discarded"
    )
    max_forward_passes: int | None = setting(
        None, "Budget: forward passes, the prefill included (default 2x max-new-tokens).", ge=0
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"Budget.{f.name} must be an integer or None, got {value!r}")
            if value is not None and value < 0:
                raise ValueError(f"Budget.{f.name} must be >= 0 or None, got {value}")

    def resolve(self, max_new_tokens: int) -> Budget:
        """Concrete limits for a generation of at most ``max_new_tokens`` tokens."""
        discarded = (
            max_new_tokens if self.max_discarded_tokens is None else self.max_discarded_tokens
        )
        forward = 2 * max_new_tokens if self.max_forward_passes is None else self.max_forward_passes
        backtracks = discarded if self.max_backtracks is None else self.max_backtracks
        return Budget(backtracks, discarded, max(forward, 1))


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode one sequence.

    Sampling follows transformers' order: temperature, top-k, top-p, min-p. ``temperature=0``
    means greedy decoding.

    The defaults below are the project's sampling protocol, the paper's (a lowered temperature
    with a top-k filter), which ``generate``, ``eval``, training and the server decode with
    unless told otherwise. Plain sampling of the whole vocabulary is
    ``temperature=1.0, top_k=None``. Each field's declaration (:class:`Setting`: bounds, help,
    flag, request field) is the one place the CLI, the server and the evaluation read it from.

    Attributes:
        max_new_tokens: length limit of the final completion (rolled-back tokens do not count).
        temperature, top_k, top_p, min_p: the sampling distribution (``None`` disables a
            filter; so do ``top_k=0``, ``top_p=1`` and ``min_p=0``, stored as ``None``).
        stop: stop strings, matched across token boundaries in the completion text.
        eos_token_ids: token ids that end decoding; ``None`` takes the model's generation config
            (and the tokenizer's EOS token).
        seed: if set, sampling draws from a ``torch.Generator`` seeded with it: the same draws
            as ``torch.manual_seed(seed)`` right before ``model.generate``.
        period: the operator is consulted every ``period`` tokens (the paper's kappa).
        ban: what happens to a token deleted by a rollback at the position where decoding
            resumes. ``"accumulate"`` (default) bans every token rejected at that position
            until the prefix before it changes, so the same token cannot simply come back (at
            temperature 0 it otherwise always would) and rejections cannot ping-pong between
            two tokens; ``"next"`` bans only the last rejected token for the next draw there;
            ``"none"`` bans nothing. A ban never empties the distribution: if every candidate
            is banned, the ban is ignored for that draw.
        max_retries_per_position: once decoding has resumed this many times at one position
            (under the same prefix), the token sampled there is kept without consulting the
            operator. A flat distribution where even the best token looks "too unlikely" would
            otherwise make a probability-based operator reject token after token at the same
            place until the whole budget is gone (a loop without this cap and without bans
            livelocked like this on 9 of 20 HumanEval problems). ``None`` disables the cap.
        rollback_window: the deepest a rollback may reach, in tokens behind the furthest
            position decoding has reached (``None``: unbounded). Everything older is final,
            so it can be streamed: :meth:`Decoder.stream_text` and the server commit text
            that falls out of the window. A rollback that would reach further is shortened
            to the window. An operator that deletes only the token just sampled (``k=1``, the
            default of most heuristics) never reaches more than one token back, so any window
            leaves its output unchanged; ``GenerationResult.counts.deepest_rollback`` says
            how deep a generation's rollbacks went.
        banned_strings: phrases the completion must not contain, enforced by rolling back
            to where a match begins after every token, whatever the operator or budget, and
            held back from streams while they could still grow into a match
            (:mod:`backtrack.engine.banning` defines hard and soft bans).
        banned_regex: patterns the completion must not match, likewise.
        banned_ignore_case: match banned strings, patterns and lists in any case.
        ban_files: ban lists (a text file of phrases, or the antislop JSON), as paths or
            ``NAME=PATH``.
        ban_whole_words: match a listed phrase only with a word boundary at both ends.
        ban_strength: a soft ban weighs a phrase's first token by ``factor ** strength``.
        ban_hard: ban every phrase of the files outright, whatever its factor.
        presence_penalty, frequency_penalty: OpenAI's penalties, in [-2, 2]: subtract
            ``presence * [count > 0] + frequency * count`` from the logit of each token the
            completion already holds (the surviving tokens; the prompt does not count).
        repetition_penalty: transformers' and vLLM's, > 0 (1 is off): the logit of a token
            seen in the prompt or the completion is divided by it if positive, multiplied if
            negative (vLLM counts the prompt too).
        dry_multiplier, dry_base, dry_allowed_length, dry_sequence_breakers: DRY as in
            llama.cpp and KoboldCpp (``dry_multiplier`` 0 is off): a token that would extend a
            repeat of the context's last ``L >= dry_allowed_length`` tokens loses
            ``dry_multiplier * dry_base ** (L - dry_allowed_length)``; a token whose text
            contains a sequence breaker ends a match. Over the prompt and the completion.
        logit_bias: ``{token id: bias}`` added to the raw logits (OpenAI's, in [-100, 100]).
            All penalties act on the raw logits before temperature and the warpers
            (:mod:`backtrack.engine.penalties`), are recomputed from the surviving tokens at
            every draw (so rollbacks leave nothing behind), and are off by default.
        budget: bounds on backtracking work, see :class:`Budget`.
        top_logprobs: also record, for every final token, the ``top_logprobs`` most likely
            tokens of the raw model distribution and their log-probabilities
            (``GenerationResult.top_logprobs``; 0: none, at no extra cost). A report asked for
            by one call (the server's ``logprobs``), not a decoding setting: it changes
            nothing that is drawn, so it is not part of the flat settings.
    """

    # 512, `eval`'s length before there was one default (`generate` had 128, the library 256):
    # HumanEval and MBPP solutions fit with room, and decoding ends sooner at EOS or a stop
    # string, so the limit only costs on a completion that runs on. A request's length is
    # OpenAI's max_tokens, with the protocol's own defaults.
    max_new_tokens: int = setting(
        512, "Length of the final completion, in tokens.", ge=1, request="protocol"
    )
    # OpenAI bounds temperature at 2; above it sampling is close to uniform noise.
    temperature: float = setting(
        0.5, "Sampling temperature; 0 = greedy.", ge=0, le=2, request="top"
    )
    top_k: int | None = setting(50, "Top-k filter (0: off).", ge=0, off=0, request="top")
    top_p: float | None = setting(
        None, "Nucleus (top-p) filter (1: off).", gt=0, le=1, off=1.0, request="top"
    )
    min_p: float | None = setting(
        None, "Min-p filter (0: off).", ge=0, le=1, off=0.0, request="top"
    )
    stop: Sequence[str] = setting((), "Stop string (repeatable).", request="protocol")
    eos_token_ids: Sequence[int] | None = None
    seed: int | None = None
    period: int = setting(1, "Consult the operator every N tokens.", ge=1)
    ban: BanPolicy = setting(
        "accumulate", "What a rollback bans where decoding resumes: accumulate|next|none."
    )
    max_retries_per_position: int | None = setting(
        3, "Resumes at one position before its token is kept.", ge=0, flag="--max-retries"
    )
    rollback_window: int | None = setting(
        None,
        "Deepest rollback, in tokens behind the furthest position reached (none: unbounded).",
        ge=0,
        request_default=INTERACTIVE_ROLLBACK_WINDOW,
    )
    banned_strings: Sequence[str] = setting(
        (), "Banned string, never output: rolled back and resampled (repeatable).",
        flag="--ban-string",
    )  # fmt: skip
    banned_regex: Sequence[str] = setting(
        (), "Banned regular expression (repeatable).", flag="--ban-regex"
    )
    banned_ignore_case: bool = setting(
        False,
        "Match banned phrases and regexes case-insensitively.",
        flag="--ban-ignore-case",
        request_name="ban_ignore_case",
    )
    ban_files: Sequence[str] = setting(
        (),
        "Ban list: a text file, one phrase per line (banned outright), or the antislop JSON "
        "[[phrase, factor], ...] (soft bans) (repeatable).",
        flag="--ban-file",
        request=None,  # a server names the lists it loaded (--ban-list NAME=PATH)
    )
    ban_whole_words: bool = setting(
        False, "Match banned phrases only as whole words (not 'mia' in 'Miami')."
    )
    ban_strength: float = setting(
        1.0, "Soft bans: a phrase of factor f multiplies its first token by f**S.", ge=0
    )
    ban_hard: bool = setting(False, "Ban every listed phrase outright, whatever its factor.")
    presence_penalty: float = setting(
        0.0, "OpenAI presence penalty (0: off).", ge=-2, le=2, request="top"
    )
    frequency_penalty: float = setting(
        0.0, "OpenAI frequency penalty (0: off).", ge=-2, le=2, request="top"
    )
    repetition_penalty: float = setting(
        1.0, "Repetition penalty over prompt and completion (1: off; vLLM's).", gt=0,
        request="top",
    )  # fmt: skip
    dry_multiplier: float = setting(0.0, "DRY penalty multiplier (0: off).", ge=0, request="top")
    dry_base: float = setting(1.75, "DRY exponential base.", gt=1, request="top")
    dry_allowed_length: int = setting(
        2, "DRY: longest repeat left unpenalised, in tokens.", ge=1, request="top"
    )
    # llama.cpp's default breakers.
    dry_sequence_breakers: Sequence[str] = setting(
        ("\n", ":", '"', "*"),
        "DRY sequence breaker (repeatable; replaces the default).",
        flag="--dry-sequence-breaker",
        request="top",
    )
    logit_bias: Mapping[int, float] = setting(
        {}, "TOKEN_ID=BIAS added to that logit, in [-100, 100] (repeatable).", request="top"
    )
    budget: Budget = field(default_factory=Budget)
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        for f in fields(self):
            declared = f.metadata.get("setting")
            if declared is None:
                continue
            value = getattr(self, f.name)
            if declared.off is not UNSET and value == declared.off and value is not None:
                value = None  # one spelling of "off"
                object.__setattr__(self, f.name, None)
            if isinstance(f.default, tuple):  # list-valued: one spelling, a tuple
                value = (value,) if isinstance(value, str) else tuple(value or ())
                object.__setattr__(self, f.name, value)
            elif _integral(f.name) and value is not None and not _is_int(value):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            declared.check(f.name, value)
        if self.ban not in typing.get_args(BanPolicy):
            raise ValueError(f"ban must be 'accumulate', 'next' or 'none', got {self.ban!r}")
        lists = ("stop", "dry_sequence_breakers", "banned_strings", "banned_regex", "ban_files")
        for name in lists:
            if any(not isinstance(s, str) or not s for s in getattr(self, name)):
                raise ValueError(f"{name} must be non-empty strings")
        self.bans()  # validates: patterns that do not compile, lists that do not read
        # One spelling (int keys, float biases), read-only in effect: a frozen config's bias.
        object.__setattr__(self, "logit_bias", _FrozenBias(parse_logit_bias(self.logit_bias or {})))

    def bans(self) -> Bans | None:
        """Everything banned, compiled (each list once per process, shared), or ``None``."""
        return build_bans(
            self.banned_strings,
            self.banned_regex,
            self.ban_files,
            ignore_case=self.banned_ignore_case,
            whole_words=self.ban_whole_words,
            strength=self.ban_strength,
            hard=self.ban_hard,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    # ---------------------------------------------------------------- flat form
    # Settings files (training YAML, a policy's metadata, an evaluation's meta.json) and the
    # CLI flags spell a GenerationConfig as one flat mapping: the declared fields, with the
    # budget's three bounds at top level. ``seed``, ``eos_token_ids`` and ``top_logprobs``
    # belong to one call (a seed per evaluation cell, EOS from the model, a report), so they
    # are not part of it.

    def to_flat(self) -> dict[str, Any]:
        """The settings as one flat, JSON-ready mapping (keys: :data:`GENERATION_KEYS`)."""
        flat = {name: getattr(self, name) for name in GENERATION_KEYS if name not in BUDGET_KEYS}
        flat.update({name: list(flat[name]) for name in _LIST_KEYS})
        # JSON's spelling: string keys (from_flat turns them back into ids).
        flat["logit_bias"] = {str(k): v for k, v in self.logit_bias.items()}
        flat.update(asdict(self.budget))
        return flat

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], **base: Any) -> GenerationConfig:
        """Build from a flat mapping (:meth:`to_flat`'s keys; others are an error).

        ``base``: defaults for keys the mapping leaves out (flat keys too).
        """
        merged = {**base, **dict(flat)}
        unknown = sorted(set(merged) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(
                f"unknown generation settings: {', '.join(unknown)}; "
                f"allowed: {', '.join(GENERATION_KEYS)}"
            )
        budget = Budget(**{k: merged.pop(k) for k in BUDGET_KEYS if k in merged})
        return cls(budget=budget, **merged)

    def updated(self, flat: Mapping[str, Any]) -> GenerationConfig:
        """This config with the settings ``flat`` gives (flat keys) replaced."""
        return GenerationConfig.from_flat(flat, **self.to_flat())

    def differences(self, other: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{key: (other's value, ours)}`` for every flat key of ``other`` we disagree on."""
        ours = self.to_flat()
        return {
            key: (value, ours[key])
            for key, value in other.items()
            if key in ours and _normalized(value) != _normalized(ours[key])
        }


def declared_settings() -> tuple[Declared, ...]:
    """Every flat setting with its declaration, in :data:`GENERATION_KEYS` order."""
    out = []
    for cls in (GenerationConfig, Budget):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if "setting" in f.metadata:
                default = f.default_factory() if callable(f.default_factory) else f.default
                out.append(Declared(f.name, f.metadata["setting"], hints[f.name], default))
    return tuple(out)


def config_from_given(
    given: Mapping[str, Any], base: GenerationConfig | None = None
) -> GenerationConfig:
    """``base`` (default ``GenerationConfig()``) with the settings ``given`` gives (flat keys,
    see :data:`GENERATION_KEYS`); a ``None`` value is "not given" and keeps ``base``'s. The
    one way flags and request fields become a config. Raises a one-line ``ValueError``."""
    chosen = {key: value for key, value in given.items() if value is not None}
    return (base or GenerationConfig()).updated(chosen)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integral(name: str) -> bool:
    """Whether the setting ``name`` is an integer (its annotation says int)."""
    return _INT_SETTINGS.get(name, False)


class _FrozenBias(dict):
    """``logit_bias`` as stored on a frozen config: a dict that hashes by its items, so the
    config stays hashable."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def _normalized(value: Any) -> Any:
    """Lists and tuples compare alike (JSON turns tuples into lists), and so do a mapping's
    integer and string keys (JSON's keys are strings)."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return list(value) if isinstance(value, (list, tuple)) else value


BUDGET_KEYS = tuple(f.name for f in fields(Budget))
# A seed per call (an evaluation cell, an episode), EOS ids from the model and what a call
# asks to be reported (top_logprobs): not settings.
PER_CALL_KEYS = ("seed", "eos_token_ids", "top_logprobs")
# The flat form's keys: the declared fields of GenerationConfig, then the budget's bounds.
GENERATION_KEYS = tuple(d.name for d in declared_settings())
# The list-valued settings (their default is a tuple): lists in the flat form. ``logit_bias``
# (a mapping) is a dict with string keys there.
_LIST_KEYS = tuple(d.name for d in declared_settings() if isinstance(d.default, tuple))
_INT_SETTINGS = {d.name: d.integral for d in declared_settings()}
