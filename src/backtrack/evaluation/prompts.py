"""Turning problems into model prompts, and model output back into runnable programs.

Representation (one, documented): a *completion* is whatever text the model produced after the
prompt, post-processed. :func:`build_program` turns (problem, completion, mode) into the program
source *without* tests; :func:`program_for` appends the tests and the ``check`` call.

* ``completion`` mode (base models): the prompt is ``problem.prompt`` verbatim; the completion is
  the function body; it is cut at the earliest stop string, and the program is
  ``prompt + completion``.
* ``chat`` mode (instruct models): the prompt is the tokenizer's chat template around an
  instruction plus the problem's code; from the reply we take the first fenced Python block (or
  the whole reply). If that code defines the entry-point function, it is a full solution and the
  program is the prompt's import lines + the code (so helpers the prompt imported stay
  available); otherwise it is a body and the program is ``prompt + code``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backtrack.evaluation.data import Problem
from backtrack.execution import programs
from backtrack.execution.programs import defines_function, extract_code, prompt_imports

MODES = ("completion", "chat")

# EvalPlus's stop set for HumanEval-style completion (the default).
EVALPLUS_STOP: tuple[str, ...] = (
    "\ndef ",
    "\nclass ",
    "\nimport ",
    "\nfrom ",
    "\nassert ",
    "\nif __name__",
    "\ndef main(",
    "\nprint(",
)
# The original Codex paper's stop set.
CODEX_STOP: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
DEFAULT_STOP = EVALPLUS_STOP

CHAT_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function "
    "(including its signature) in a single ```python code block."
)


def truncate_at_stop(completion: str, stop: Sequence[str] = DEFAULT_STOP) -> str:
    """Cut ``completion`` at the earliest stop string; only the completion is searched."""
    return programs.truncate_at_stop(completion, stop)


def chat_messages(problem: Problem, instruction: str = CHAT_INSTRUCTION) -> list[dict[str, str]]:
    """The user turn for chat mode: the instruction, then the prompt in a fenced block."""
    content = f"{instruction}\n\n```python\n{problem.prompt.strip()}\n```"
    return [{"role": "user", "content": content}]


def build_prompt(problem: Problem, mode: str = "completion", tokenizer: Any = None) -> str:
    """Text fed to the model. Chat mode needs a tokenizer with a chat template."""
    _check_mode(mode)
    if mode == "completion":
        return problem.prompt
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat mode needs a tokenizer with a chat template")
    return tokenizer.apply_chat_template(
        chat_messages(problem), tokenize=False, add_generation_prompt=True
    )


def postprocess(
    problem: Problem, raw: str, mode: str = "completion", stop: Sequence[str] = DEFAULT_STOP
) -> str:
    """Model output -> completion: truncate (completion mode) or extract code (chat mode)."""
    _check_mode(mode)
    if mode == "completion":
        return truncate_at_stop(raw, stop)
    return extract_code(raw)


def build_program(problem: Problem, completion: str, mode: str = "completion") -> str:
    """Program source (no tests) for a post-processed completion; see the module docstring."""
    _check_mode(mode)
    if mode == "chat" and defines_function(completion, problem.entry_point):
        return prompt_imports(problem.prompt) + "\n" + completion
    return problem.prompt + completion


def program_for(problem: Problem, completion: str, mode: str = "completion") -> str:
    """The program the sandbox runs: solution, then tests, then ``check(entry_point)``."""
    solution = build_program(problem, completion, mode)
    return f"{solution}\n{problem.test}\ncheck({problem.entry_point})\n"


def _check_mode(mode: str) -> None:
    """Reject unknown modes early with the list of valid ones."""
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose from {', '.join(MODES)}")
