"""The examples a prompt shows, parsed once and run against a solution in the sandbox.

A HumanEval or MBPP prompt usually shows how its function behaves: doctest lines
(``>>> f(1, 2)`` followed by the expected output) and statements in prose
(``f(2, 3) == 5``, ``f([1, 2]) ➞ 3``). They are part of the prompt, so checking a completion
against them uses nothing hidden: the ``examples`` operator runs them when a completion
finishes and repairs it locally when one fails; the sample filter keeps the first sample that
passes them. The hidden tests are never used.

Parsing (:func:`parse_examples`):

* doctest examples, found by the standard library's ``doctest.DocTestParser`` over the
  prompt's code: each ``>>>`` expression with the output below it (an empty output means the
  expression returns ``None``, as in doctest); ``>>>`` statements (``x = [1, 2]``) are kept as
  setup, run before the examples in order; an example whose expected output is a traceback is
  dropped;
  An ``assert f(x) == y`` line (MBPP+ prompts show one test so) is an example too.
  A ``>>> f(x) == y`` line with no output below it is read as the assertion it is meant to be
  (``f(x)`` should equal ``y``);
* prose statements: a call of a function the prompt defines, then one of ``==``, ``==>``,
  ``=>``, ``->``, ``➞``, ``→``, ``returns``, ``should return``, then a Python expression (the rest
  of the line, less a trailing ``.``, ``,`` or ``;``; of ``a - b = c``, the ``c``); both sides
  must parse as expressions.

Comparison (inside the sandbox, :data:`_CHECKER`): the expected text is evaluated in the
program's namespace and compared with ``==``, numbers with ``math.isclose`` (relative and
absolute tolerance 1e-6, element-wise through lists and tuples: prompts print rounded floats);
when the expected text is not an expression, or the call printed instead of returning, the text
is compared with the ``repr``, the ``str`` or the printed output (``true``/``false`` in any case).
Prompts have mistakes of their own (HumanEval/47's median example is wrong, HumanEval/80 calls
``is_happy(a)`` with an undefined name): such an example fails for every completion, so it
costs repairs but cannot select one completion over another.
"""

from __future__ import annotations

import ast
import doctest
import functools
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from backtrack.execution.programs import defined_functions, fenced_code, solution_program
from backtrack.execution.sandbox import SandboxConfig, run_program
from backtrack.literals import bracket_depths

# Printed by the checker before each example's verdict; the count of passed examples is read
# from these lines (the pass/fail of the whole run comes from the sandbox's own signal).
MARK = "__backtrack_example__"
_ARROWS = ("==>", "==", "=>", "->", "➞", "→", "should return", "returns")
_TRAILING = ".,;"


@dataclass(frozen=True)
class Example:
    """One visible example: ``expression`` should evaluate to ``expected`` (source text; an
    empty string means ``None``), after the ``setup`` statements shown before it."""

    expression: str
    expected: str
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class VisibleExamples:
    """What a prompt shows: its code, whether it is a chat prompt, the function to complete,
    and the examples (empty: nothing to check, the examples operator is a no-op)."""

    prompt_code: str
    chat: bool
    entry_point: str | None
    examples: tuple[Example, ...]

    def program(self, completion: str) -> str:
        """The solution's source for ``completion`` (as the evaluation builds it)."""
        return solution_program(self.prompt_code, completion, self.chat, self.entry_point)


@dataclass(frozen=True)
class ExamplesRun:
    """The outcome of running the visible examples on one solution."""

    passed: bool  # every example passed (the sandbox's own pass signal)
    passed_count: int
    total: int
    status: str  # the sandbox's status (passed, failed, timeout, error, ...)
    detail: str
    duration_s: float


def _parses(source: str) -> bool:
    try:
        ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return False
    return True


def _before_docstring_end(want: str) -> str:
    """The expected output less the docstring's closing quotes (doctest reads an example's
    output up to the next blank line, and prompts often close the docstring right below)."""
    lines = []
    for line in want.splitlines():
        if line.strip().startswith(('"""', "'''")):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def _doctest_examples(code: str) -> list[Example]:
    examples: list[Example] = []
    setup: list[str] = []
    try:
        parsed = doctest.DocTestParser().get_examples(code)
    except ValueError:  # inconsistent indentation: no doctest examples we can trust
        return []
    for item in parsed:
        source, want = item.source.strip(), _before_docstring_end(item.want)
        if want.startswith("Traceback"):
            continue
        if not _parses(source):
            if not want:
                setup.append(source)  # a statement: setup for what follows
            continue
        if not want and (split := _equality(source)) is not None:
            source, want = split  # ">>> f(x) == y" with no output: an assertion, as meant
        examples.append(Example(source, want, tuple(setup)))
    return examples


def _equality(source: str) -> tuple[str, str] | None:
    """``(left, right)`` when ``source`` is ``left == right``, else None."""
    tree = ast.parse(source, mode="eval").body
    if isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq):
        return ast.unparse(tree.left), ast.unparse(tree.comparators[0])
    return None


def _call_end(line: str, start: int) -> int | None:
    """Index just past the parenthesis closing the call whose ``(`` is at ``start``."""
    for i, char, depth in bracket_depths(line, start):
        if char in ")]}" and depth == 0:
            return i + 1
    return None


def _prose_examples(code: str, functions: Sequence[str]) -> list[Example]:
    examples = []
    if not functions:
        return examples
    call = re.compile(r"\b(" + "|".join(map(re.escape, functions)) + r")\s*\(")
    for line in code.splitlines():
        if line.lstrip().startswith((">>>", "...", "def ")):
            continue
        for match in call.finditer(line):
            end = _call_end(line, match.end() - 1)
            if end is None:
                continue
            rest = line[end:].strip()
            arrow = next((a for a in _ARROWS if rest.startswith(a)), None)
            if arrow is None:
                continue
            expected = rest[len(arrow) :].strip().rstrip(_TRAILING).strip()
            if not _parses(expected) and " = " in expected:
                expected = expected.rsplit(" = ", 1)[1]  # "-> 19 - 5 - 6 = 8": the result
            expression = line[match.start() : end]
            if expected and _parses(expression) and _parses(expected):
                examples.append(Example(expression, expected))
    return examples


def _assert_examples(code: str) -> list[Example]:
    """``assert f(x) == y`` lines (MBPP+ prompts show one test that way)."""
    examples = []
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped.startswith("assert ") or not _parses(stripped[len("assert ") :]):
            continue
        source = stripped[len("assert ") :]
        split = _equality(source)
        examples.append(Example(*split) if split else Example(source, "True"))
    return examples


def parse_examples(prompt: str) -> VisibleExamples:
    """The visible examples of ``prompt`` (a code prompt, or a chat prompt whose code is its
    first fenced python block); see the module docstring for what counts.

    Examples:
        >>> shown = parse_examples('def add(a, b):\\n    \\'\\'\\'Add. add(2, 3) == 5\\n'
        ...                        '    >>> add(1, 1)\\n    2\\n    \\'\\'\\'\\n')
        >>> [(e.expression, e.expected) for e in shown.examples]
        [('add(1, 1)', '2'), ('add(2, 3)', '5')]
        >>> shown.entry_point, shown.chat
        ('add', False)
    """
    fenced = fenced_code(prompt)
    code = prompt if fenced is None else fenced
    functions = defined_functions(code)
    found = _doctest_examples(code) + _assert_examples(code) + _prose_examples(code, functions)
    unique: dict[str, Example] = {}
    for example in found:
        unique.setdefault(example.expression, example)
    return VisibleExamples(
        prompt_code=code,
        chat=fenced is not None,
        entry_point=functions[-1] if functions else None,
        examples=tuple(unique.values()),
    )


_CHECKER = """

def __backtrack_examples(examples, mark):
    import contextlib, io, math, sys

    def close(got, want):
        if isinstance(got, bool) or isinstance(want, bool):
            return got == want
        if isinstance(got, (int, float)) and isinstance(want, (int, float)):
            return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
        if isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)):
            return len(got) == len(want) and all(map(close, got, want))
        return got == want

    def same(got, printed, want_src):
        if not want_src:
            return got is None
        try:
            want = eval(want_src, globals())
        except Exception:
            text = want_src.strip()
            if text.lower() in ("true", "false"):  # prose often writes booleans in lowercase
                return str(got).lower() == text.lower()
            return text in (repr(got), str(got), printed.strip())
        if got is None and printed.strip():
            return printed.strip() == str(want) or printed.strip() == want_src.strip()
        return close(got, want)

    passed = 0
    for index, (setup, expression, want_src) in enumerate(examples):
        ok = False
        try:
            for statement in setup:
                exec(statement, globals())
            captured = io.StringIO()
            with contextlib.redirect_stdout(captured):
                got = eval(expression, globals())
            ok = bool(same(got, captured.getvalue(), want_src))
        except Exception:
            ok = False
        passed += ok
        print(mark, index, int(ok), file=sys.__stdout__, flush=True)
    assert passed == len(examples), f"{passed} of {len(examples)} visible examples passed"

"""


def examples_program(solution: str, examples: Sequence[Example]) -> str:
    """``solution`` followed by the checker over ``examples`` (it raises unless all pass)."""
    rows = [(list(e.setup), e.expression, e.expected) for e in examples]
    return f"{solution}\n{_CHECKER}\n__backtrack_examples({rows!r}, {MARK!r})\n"


def run_examples(
    solution: str, examples: Sequence[Example], config: SandboxConfig | None = None
) -> ExamplesRun:
    """Run ``examples`` on ``solution`` in the sandbox (one fresh subprocess)."""
    result = run_program(examples_program(solution, examples), config)
    verdicts = [
        line.split()[2] == "1"
        for line in result.stdout.splitlines()
        if line.startswith(MARK + " ") and len(line.split()) == 3
    ]
    return ExamplesRun(
        passed=result.passed,
        passed_count=sum(verdicts[: len(examples)]),
        total=len(examples),
        status=result.status,
        detail=result.detail,
        duration_s=result.duration_s,
    )


@functools.cache
def check_pool(workers: int = 2) -> ThreadPoolExecutor:
    """The threads that wait on example runs for decoding (one pool per process: a batch of
    rows shares it, so checks overlap with decoding instead of stalling it). Threads only wait
    on subprocesses, so two suffice on a small machine; each run is its own process."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backtrack-examples")
