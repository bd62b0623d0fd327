"""The ``check(candidate)`` we run for an EvalPlus record (HumanEval+, MBPP+), and its limits.

EvalPlus files carry inputs, not assertions. The check built here runs the canonical solution
(in its own namespace) and the candidate on every base and plus input and compares the outputs
with EvalPlus 0.3.1's rules (``evalplus/eval/__init__.py``, ``unsafe_execute`` and
``untrusted_check``; read from its source, reimplemented here):

* per input, the candidate call runs under a SIGALRM interval timer of
  ``max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * reference time of that input)``;
* the base inputs and the plus inputs are two groups (two processes in EvalPlus), each allowed
  ``min(GROUP_CAP_S, sum of its limits) + GROUP_SLACK_S`` seconds of candidate time;
* the first failing input fails the program (EvalPlus's default ``fast_check``); a timed-out
  input fails it with a detail naming the group, the input's index and its limit;
* outputs match when equal, or through a special oracle, or (when the task has a tolerance, or
  the expected output is float(s), which sets the tolerance to 1e-6 for the rest of the group,
  as EvalPlus's loop does) when the types are equal, sequences have equal length and the values
  are close the way ``np.allclose(out, exp, rtol=1e-7, atol=atol)`` says. numpy is not
  importable in sandboxed programs, so :data:`_CHECK_LIBRARY` reimplements ``allclose``
  (broadcasting a length-1 side, NaN never close, infinities close only to themselves); unlike
  numpy it accepts ragged nested lists whose items are all close.

Known differences left: EvalPlus runs the candidate's module afresh for each group, we once
per program; EvalPlus precomputes the expected outputs, we compute them in the sandbox (so the
program's wall-clock limit, :func:`program_time_limit`, includes the reference's run).

This module is a leaf (standard library only) so that both the loaders
(:mod:`backtrack.evaluation.data`) and the reference timing
(:mod:`backtrack.evaluation.reference_times`) can use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

# evalplus/config.py DEFAULT_MIN_TIME_LIMIT: no input gets less than this (s).
MIN_TIME_LIMIT_S = 1.0
# evalplus/config.py DEFAULT_GT_TIME_LIMIT_FACTOR: an input may take this many times the
# canonical solution's own time on it.
TIME_LIMIT_FACTOR = 4.0
# untrusted_check: timeout = min(EVALPLUS_TIMEOUT_PER_TASK default 60, sum(limits)) + 1 per
# process. (Its join waits one more second, which covers the process start and the exec of
# the candidate's module: time our program spends outside the candidate's calls.)
GROUP_CAP_S = 60.0
GROUP_SLACK_S = 1.0
# Our program also runs the reference on every input (EvalPlus precomputes its outputs): its
# measured total is doubled for the load on a shared machine, and START_UP_SLACK_S covers the
# interpreter and sandbox start, parsing the inputs, deep copies and comparisons.
REFERENCE_TIME_MARGIN = 2.0
# What a result directory's meta.json records as the rule its plus verdicts were scored by.
SCORING_RULE = (
    f"EvalPlus 0.3.1 per-input limits: max({MIN_TIME_LIMIT_S}, {TIME_LIMIT_FACTOR} x reference "
    f"time), base and plus capped at min({GROUP_CAP_S}, sum) + {GROUP_SLACK_S} s"
)
START_UP_SLACK_S = 5.0

# MBPP+ outputs compared as sets / only for "is not None" (evalplus/eval/_special_oracle.py).
MBPP_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
               "larg_nnum", "intersection_array", "find_dissimilar", "Diff")  # fmt: skip
MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
# MBPP+ functions with an oracle of their own (Mbpp/164, 295, 581, 558), keyed by entry point.
MBPP_OWN_ORACLE = ("are_equivalent", "sum_div", "surface_Area", "digit_distance_nums")

# MBPP+ stores tuples, sets and complex numbers as JSON lists/strings; these rules (task number
# -> conversion) restore the argument types the canonical solutions expect.
MBPP_INPUT_KINDS: dict[str, tuple[int, ...]] = {
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


def oracle_for(entry_point: str, dataset: str) -> str:
    """Which EvalPlus comparison rule applies to this function ("equal" for most)."""
    if dataset == "humaneval":
        return "find_zero" if entry_point == "find_zero" else "equal"
    if entry_point in MBPP_OWN_ORACLE:
        return entry_point
    if entry_point in MBPP_SET_EQ:
        return "set_eq"
    return "not_none" if entry_point in MBPP_NOT_NONE else "equal"


def input_kind(task_id: str, dataset: str) -> str:
    """The MBPP+ argument-type restoration rule for a task ("none" for HumanEval+)."""
    if dataset != "mbpp":
        return "none"
    number = int(task_id.rsplit("/", 1)[-1])
    return next((k for k, ids in MBPP_INPUT_KINDS.items() if number in ids), "none")


def reference_source(record: dict, dataset: str) -> str:
    """The canonical solution as a module (MBPP+'s is a whole function, its prompt a string)."""
    if dataset == "mbpp":
        return record["canonical_solution"]
    return record["prompt"] + record["canonical_solution"]


def input_limits(reference_times: Sequence[float]) -> list[float]:
    """EvalPlus's per-input limits: ``max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * time)``."""
    return [max(MIN_TIME_LIMIT_S, TIME_LIMIT_FACTOR * t) for t in reference_times]


def group_budget(limits: Sequence[float]) -> float:
    """Candidate seconds one group of inputs (base or plus) may use in all."""
    return min(GROUP_CAP_S, sum(limits)) + GROUP_SLACK_S


def program_time_limit(base_times: Sequence[float], plus_times: Sequence[float]) -> float:
    """The wall-clock limit for a whole program: the reference's run (with a margin), both
    groups' candidate budgets and the start-up slack. A correct program EvalPlus passes,
    however slow, fits in it; what runs past it is killed as a whole."""
    reference = REFERENCE_TIME_MARGIN * (sum(base_times) + sum(plus_times))
    budgets = group_budget(input_limits(base_times)) + group_budget(input_limits(plus_times))
    return round(reference + budgets + START_UP_SLACK_S, 3)


# Restores MBPP+ argument types; shared by the check and the reference timing program.
CONVERT_SOURCE = """
def _bt_convert(inputs, kind):
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
        return [[[set(i) if isinstance(i, list) and len(i) else {} for i in inp[0]]]
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
        return [[{k: T(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if kind == "complex_first":
        return [[complex(inp[0])] for inp in inputs]
    if kind == "all_tuples":
        def deep(x):
            return T(deep(i) for i in x) if isinstance(x, list) else x
        return [deep(inp) for inp in inputs]
    return inputs
"""

# Runs in the sandbox after the candidate's code; every name starts with _bt_ to stay clear of
# the candidate's. No str.format here: the record's data travel as one JSON literal.
_CHECK_LIBRARY = (
    '''

import cmath as _bt_cmath
import copy as _bt_copy
import json as _bt_json
import math as _bt_math
import signal as _bt_signal
import time as _bt_time


def _bt_time_out(message):
    # The sandbox reports a failing program's exception type name as the run's detail, so the
    # type is named by the message; BaseException so that "except Exception" cannot swallow it.
    return type(message, (BaseException,), {})(message)


def _bt_call(candidate, args, group, index, limits, budget, spent):
    """Call the candidate under the input's limit and the group's remaining budget."""
    if limits is None:
        return candidate(*args), spent
    limit, left = limits[index], budget - spent
    if left <= 0:
        raise _bt_time_out(f"timeout: the {group} inputs used their {budget:.2f} s budget "
                           f"before input {index}")
    if limit <= left:
        message = f"timeout on {group} input {index} (limit {limit:.2f} s)"
    else:
        message = (f"timeout on {group} input {index}: the {group} inputs' "
                   f"{budget:.2f} s budget ran out")

    def on_alarm(signum, frame):
        raise _bt_time_out(message)

    previous = _bt_signal.signal(_bt_signal.SIGALRM, on_alarm)
    start = _bt_time.perf_counter()
    _bt_signal.setitimer(_bt_signal.ITIMER_REAL, min(limit, left))
    try:
        out = candidate(*args)
    finally:
        _bt_signal.setitimer(_bt_signal.ITIMER_REAL, 0)
        spent += _bt_time.perf_counter() - start
        _bt_signal.signal(_bt_signal.SIGALRM, previous)
    return out, spent


def _bt_is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _bt_allclose(out, exp, atol, rtol=1e-7):
    """np.allclose(out, exp, rtol, atol) for numbers and (nested) sequences of numbers."""
    seq = (list, tuple)
    if isinstance(out, seq) or isinstance(exp, seq):
        xs = list(out) if isinstance(out, seq) else [out]
        ys = list(exp) if isinstance(exp, seq) else [exp]
        if len(xs) != len(ys):
            if len(xs) == 1:
                xs = xs * len(ys)
            elif len(ys) == 1:
                ys = ys * len(xs)
            else:
                return False
        return all(_bt_allclose(x, y, atol, rtol) for x, y in zip(xs, ys))
    numbers = (int, float, complex)  # bool is an int, as numpy treats it
    if not isinstance(out, numbers) or not isinstance(exp, numbers):
        return False
    if _bt_cmath.isnan(out) or _bt_cmath.isnan(exp):
        return False
    if _bt_cmath.isinf(out) or _bt_cmath.isinf(exp):
        return out == exp
    return abs(out - exp) <= atol + rtol * abs(exp)


def _bt_poly(xs, x):
    return sum(c * _bt_math.pow(x, i) for i, c in enumerate(xs))


def _bt_pyramid_surface(base_edge, height):
    # Mbpp/581: the height is the apex's distance from the base; the area is rounded.
    slant = _bt_math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _bt_digit_distance(a, b):
    # Mbpp/558: both numbers zero-padded to the same length, digit differences summed.
    width = max(len(str(a)), len(str(b)))
    return sum(abs(int(x) - int(y)) for x, y in zip(str(a).zfill(width), str(b).zfill(width)))


def _bt_exact(oracle, out, exp, args, atol):
    """EvalPlus's exact match, after the special oracles that replace or widen it."""
    exact = out == exp
    if oracle == "are_equivalent":
        return True
    if oracle == "sum_div":
        return exact or out == 0
    if oracle == "surface_Area":
        return exact or abs(out - _bt_pyramid_surface(*args)) <= atol
    if oracle == "digit_distance_nums":
        return exact or out == _bt_digit_distance(*args)
    if oracle == "set_eq":
        return set(out) == set(exp)
    if oracle == "not_none":
        return out == exp if isinstance(out, bool) else exp == (out is not None)
    return exact


def _bt_group(group, inputs, limits, candidate, reference, atol, oracle):
    budget = None if limits is None else min(_BT_GROUP_CAP_S, sum(limits)) + _BT_GROUP_SLACK_S
    spent = 0.0
    for index, args in enumerate(inputs):
        exp = reference(*_bt_copy.deepcopy(args))
        if oracle == "not_none":
            exp = exp is not None
        given = _bt_copy.deepcopy(args)
        out, spent = _bt_call(candidate, given, group, index, limits, budget, spent)
        if oracle == "find_zero":
            assert abs(_bt_poly(*given, out)) <= atol, (group, index)
            continue
        exact = _bt_exact(oracle, out, exp, given, atol)
        if atol == 0 and _bt_is_floats(exp):
            atol = 1e-6  # and for the rest of the group, as in EvalPlus's loop
        if not exact and atol != 0:
            assert type(out) == type(exp), (group, index)
            if isinstance(exp, (list, tuple)):
                assert len(out) == len(exp), (group, index)
            assert _bt_allclose(out, exp, atol), (group, index)
        else:
            assert exact, (group, index)


def _bt_check(check, candidate, entry, spec_json):
    if candidate is check:  # an MBPP+ task whose function is itself named check
        candidate = entry
    spec = _bt_json.loads(spec_json)
    namespace = {}
    exec(compile(spec["reference"], "<reference>", "exec"), namespace)
    reference = namespace[spec["entry_point"]]
    for group in ("base", "plus"):
        inputs = _bt_convert(spec[group + "_inputs"], spec["kind"])
        limits = spec[group + "_limits"]
        _bt_group(group, inputs, limits, candidate, reference, spec["atol"], spec["oracle"])
'''
    + CONVERT_SOURCE
)


def check_source(
    record: dict,
    dataset: str,
    reference_times: tuple[Sequence[float], Sequence[float]] | None,
) -> str:
    """Source of ``check(candidate)`` for an EvalPlus record (``dataset``: humaneval or mbpp).

    ``reference_times`` (base, plus): the canonical solution's seconds on each input, which
    give the per-input limits; None runs without them (only the program's own limit)."""
    base, plus = list(record["base_input"]), list(record["plus_input"])
    limits: tuple[list[float] | None, list[float] | None] = (None, None)
    if reference_times is not None:
        base_times, plus_times = reference_times
        if len(base_times) != len(base) or len(plus_times) != len(plus):
            raise ValueError(
                f"{len(base_times)} base and {len(plus_times)} plus reference times for "
                f"{len(base)} base and {len(plus)} plus inputs"
            )
        limits = (input_limits(base_times), input_limits(plus_times))
    spec = {
        "reference": reference_source(record, dataset),
        "entry_point": record["entry_point"],
        "kind": input_kind(record["task_id"], dataset),
        "atol": float(record.get("atol", 0) or 0),
        "oracle": oracle_for(record["entry_point"], dataset),
        "base_inputs": base,
        "plus_inputs": plus,
        "base_limits": limits[0],
        "plus_limits": limits[1],
    }
    constants = f"_BT_GROUP_CAP_S = {GROUP_CAP_S!r}\n_BT_GROUP_SLACK_S = {GROUP_SLACK_S!r}\n"
    return (
        f"{_CHECK_LIBRARY}\n{constants}\n"
        f"_bt_entry = globals().get({record['entry_point']!r})\n\n\n"
        f"def check(candidate):\n"
        f"    _bt_check(check, candidate, _bt_entry, {json.dumps(spec)!r})\n"
    )
