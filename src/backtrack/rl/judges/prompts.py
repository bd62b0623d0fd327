"""The text the model-backed judges show their teacher model, built in one place.

Both :class:`~backtrack.rl.judges.openai_http.OpenAIJudge` and
:class:`~backtrack.rl.judges.local.LocalJudge` send the same system prompt and the same user
message (the problem, then the partial code, then the question); they differ only in the
answer format they ask for, because they read the answer differently:

* :data:`JSON_SCORE_INSTRUCTION`: a 0-10 rating as ``{"score": n}``, for the HTTP judge, which
  parses the generated text.
* :data:`DIGIT_INSTRUCTION`: a single digit 0-9, for the local judge, which reads the next-token
  probabilities of the ten digits instead of generating.

:data:`OMITTED` marks partial code whose beginning was cut to fit a prompt-length limit.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are a strict, expert Python reviewer. You are shown a programming problem and the "
    "beginning of a candidate solution that is still being written; it may stop in the middle "
    "of a line or even a word. Judge only whether the code written so far is correct and heading "
    "toward a correct solution. Do not penalize it for being unfinished."
)

#: The HTTP judge's answer format; :func:`~backtrack.rl.judges.openai_http.parse_rating` reads it.
JSON_SCORE_INSTRUCTION = (
    "Rate it from 0 (certainly wrong) to 10 (certainly on track). "
    'Answer with only a JSON object of the form {"score": n} where n is an integer 0-10.'
)

#: The local judge's answer format: one digit, so each rating is a single vocabulary token.
DIGIT_INSTRUCTION = (
    "Rate it with a single digit from 0 (certainly wrong) to 9 (certainly on track). "
    "Answer with the digit only."
)

#: Put in front of partial code whose beginning was dropped to fit the prompt.
OMITTED = "# ... (earlier code omitted)\n"


def user_prompt(problem_prompt: str, partial_code: str, instruction: str) -> str:
    """The user message: the problem and the partial code, then ``instruction`` (answer format)."""
    return (
        "Problem:\n"
        f"```python\n{problem_prompt}\n```\n\n"
        "Partial solution so far (unfinished):\n"
        f"```python\n{partial_code}\n```\n\n"
        "How likely is this partial solution to be on track to a correct, complete solution? "
        f"{instruction}"
    )


def chat_messages(problem_prompt: str, partial_code: str, instruction: str) -> list[dict[str, str]]:
    """The system prompt and :func:`user_prompt` as chat messages (role/content mappings)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(problem_prompt, partial_code, instruction)},
    ]
