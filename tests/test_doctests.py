"""The examples in the operators' docstrings run, and say what the operators do.

The API reference (docs/api/) shows these examples; running them here keeps them true.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

# Each module with the fewest examples it must run, so that a docstring losing its examples
# (or a module whose examples stop being collected) fails instead of passing vacuously. The
# examples build their steps with one line (operators.base.example_step), so a count is of
# what the examples show.
MODULES_AND_MINIMUM_EXAMPLES = {
    "backtrack.operators.base": 10,
    "backtrack.operators.heuristics": 29,
    "backtrack.operators.chaos": 5,
    "backtrack.operators.code": 12,
    "backtrack.operators.examples": 8,
    "backtrack.execution.examples": 2,
    "backtrack.operators.spec": 3,
    "backtrack.operators.features": 5,
    "backtrack.operators.lookahead": 7,
    "backtrack.evaluation.settings": 1,
    "backtrack.lazy": 3,
    "backtrack.literals": 1,
}


@pytest.mark.parametrize("module_name", sorted(MODULES_AND_MINIMUM_EXAMPLES))
def test_docstring_examples_pass(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0
    assert result.attempted >= MODULES_AND_MINIMUM_EXAMPLES[module_name]


def test_every_operator_class_has_an_example() -> None:
    from backtrack.operators.spec import OPERATORS

    finder = doctest.DocTestFinder(recurse=False)
    for name, factory in OPERATORS.items():
        if isinstance(factory, str):  # the learned operator: needs a trained policy file
            continue
        examples = [test for test in finder.find(factory) if test.examples]
        assert examples, f"operator {name!r} ({factory.__name__}) has no docstring example"
