"""The code-aware operators (line restart, syntax check) on hand-built step sequences.

Their exact state after rollbacks is checked with the other stateful operators in
``test_operators.py`` (a fresh operator fed the surviving steps ends in the same state).
"""

from __future__ import annotations

import pytest
import torch

from backtrack.engine import Decoder, GenerationConfig, RollbackEvent, Step
from backtrack.operators import LineRestart, SyntaxCheck, parse_operator
from backtrack.operators.code import python_prefix


def feed(operator, pieces, probs=None):
    """Feed steps with these texts (and probabilities); the decisions, one per step."""
    probs = probs or [0.9] * len(pieces)
    operator.reset()
    decisions, text = [], ""
    for position, (piece, prob) in enumerate(zip(pieces, probs, strict=True)):
        text += piece
        step = Step(
            position=position, token_id=position, text=piece, prob=prob, logprob=-1.0,
            logit=0.0, rank=0, entropy=0.5, top1_prob=0.6, top2_prob=0.2,
            logits=torch.zeros(4), probs=torch.zeros(4), generated=list(range(position + 1)),
            completion=text,
        )  # fmt: skip
        k = operator(step)
        decisions.append(k)
        if k:
            break
    return decisions


def test_python_prefix():
    assert python_prefix("def f(x):\n    return x\n") == "complete"
    assert python_prefix("def f(x):\n    if x:\n") == "incomplete"
    assert python_prefix("def f(x):\n    return (x,\n") == "incomplete"
    assert python_prefix('def f(x):\n    """doc\n') == "incomplete"
    assert python_prefix("def f(x):\n    return x +\n") == "invalid"
    assert python_prefix("def f(x):\n    x = 1\n  y = 2\n") == "invalid"  # bad dedent
    assert python_prefix("def f(x):\n    return '\\d'\n") == "complete"  # warning silenced


def test_line_restart_deletes_the_whole_unsure_line():
    op = LineRestart(min_prob=0.05)
    # First line sure, second line holds a 0.01 token: delete exactly the second line.
    pieces = ["    a", " = 1\n", "    b", " = ", "2", "\n"]
    probs = [0.9, 0.9, 0.9, 0.01, 0.9, 0.9]
    assert feed(op, pieces, probs) == [0, 0, 0, 0, 0, 4]
    assert feed(op, ["x", "\n"], [0.9, 0.9]) == [0, 0]


def test_line_restart_mean_and_length_limits():
    assert feed(LineRestart(min_prob=0.0001, min_mean=0.5), ["a", "b\n"], [0.3, 0.4]) == [0, 2]
    # A line longer than max_k is kept, and the next line starts fresh.
    long_line = ["a"] * 5 + ["\n"]
    assert feed(LineRestart(min_prob=0.5, max_k=3), long_line, [0.1] * 6) == [0] * 6
    with pytest.raises(ValueError):
        LineRestart(min_prob=0.0, min_mean=0.0)
    with pytest.raises(ValueError):
        LineRestart(min_prob=1.5)
    with pytest.raises(ValueError):
        LineRestart(max_k=0)


def test_syntax_check_deletes_back_to_the_last_valid_line():
    op = SyntaxCheck()
    op.set_prompt("def f(x):\n")
    pieces = ["    y", " = (x", ",\n", "  1)\n", "    return", " y +", "\n"]
    # An open bracket is fine; "return y +" cannot continue: delete back to the line end
    # after "  1)\n" (4 tokens in), i.e. the 3 tokens of the bad line.
    assert feed(op, pieces) == [0, 0, 0, 0, 0, 0, 3]


def test_syntax_check_leaves_non_python_prompts_and_far_breaks_alone():
    chat = SyntaxCheck()
    chat.set_prompt("<|im_start|>user\nWrite a function?? ((\n<|im_start|>assistant\n")
    assert feed(chat, ["def", " f(:\n"]) == [0, 0]
    far = SyntaxCheck(max_k=2)
    far.set_prompt("def f(x):\n")
    assert feed(far, ["    return", " x", " +", "\n"]) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        SyntaxCheck(max_k=0)


def test_specs_and_engine_runs(tiny):
    op = parse_operator("line-restart:min_prob=0.1+syntax-check")
    result = Decoder(*tiny).generate(
        "def f(x):\n", op, GenerationConfig(max_new_tokens=40, temperature=1.0, seed=3)
    )
    # The tiny model writes noise, which is not Python: the syntax check fires.
    assert any(
        isinstance(e, RollbackEvent) and e.operator == "line-restart+syntax-check"
        for e in result.trace
    )
