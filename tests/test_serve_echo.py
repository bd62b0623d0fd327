"""``echo`` on ``/v1/completions`` through the real server (loopback, official ``openai``
client): the prompt's text before the completion, and with ``logprobs`` the prompt tokens'
log-probabilities (the first ``None``, as OpenAI and vLLM give it) before the completion's;
``max_tokens: 0`` returns the prompt alone. On the tiny model (transformers) and on SmolLM2-135M
(llama.cpp).

References: the prompt's entries against an incremental replay of the prompt (one token at a
time on a fresh cache: tests/test_prompt_logprobs.py, whose measured gaps, 1.1e-5 on the tiny
model and 3.8e-6 on SmolLM2, justify its 1e-3 bounds); the completion's against the engine's
own record for the request (tests/test_serve_logprobs.py's ``records``), to 1e-6.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import uvicorn
from test_prompt_logprobs import SMOL_TOL, TINY_TOL, replay
from test_serve import PROMPT, LiveServer, _free_port
from test_serve_logprobs import records  # noqa: F401, F811  (a fixture)

from backtrack.backends.base import as_backend
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings, create_app

SETTINGS = dict(max_batch=2, max_queue=64, max_tokens_limit=2000, max_prompt_tokens=512)


@pytest.fixture(scope="module")
def server():
    with LiveServer(ServeSettings([TINY_MODEL_NAME], **SETTINGS)) as live:
        yield live


def _prompt_part(lp, n_prompt: int) -> list[tuple[float, list[tuple[int, float]]]]:
    return list(zip(lp.token_logprobs[1:n_prompt], lp.top_logprobs[1:n_prompt], strict=True))


def _check_prompt(lp, ids, backend, tol: float, n: int) -> None:
    """The prompt's entries: None first, then the replay's values (to ``tol``)."""
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = replay(backend, ids, n)
    for (value, top), (ref_value, alts) in zip(_prompt_part(lp, len(ids)), ref, strict=True):
        assert math.isclose(value, ref_value, abs_tol=tol)
        assert max(top.values()) <= alts[0][1] + tol
        assert math.isclose(max(top.values()), max(value, alts[0][1]), abs_tol=tol)


def test_echo_with_logprobs(server, records):  # noqa: F811
    client = server.client()
    reply = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True
    )
    choice, [result] = reply.choices[0], records
    ids = result.prompt_token_ids
    assert choice.text == PROMPT + result.text
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + len(result.token_ids)
    assert "".join(lp.tokens[: len(ids)]) == PROMPT
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    _check_prompt(lp, ids, as_backend(server.model), TINY_TOL, 2)
    completion = lp.token_logprobs[len(ids) :]
    assert all(
        math.isclose(a, b, abs_tol=1e-6) for a, b in zip(completion, result.logprobs, strict=True)
    )
    assert reply.usage.prompt_tokens == len(ids)


def test_echo_without_logprobs_and_with_max_tokens_zero(server):
    client = server.client()
    plain = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=3, temperature=0, echo=True
    )
    assert plain.choices[0].text.startswith(PROMPT) and plain.choices[0].logprobs is None
    alone = client.completions.create(
        model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1
    )
    choice = alone.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert alone.usage.completion_tokens == 0
    ids = server.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert len(choice.logprobs.tokens) == len(ids) == alone.usage.prompt_tokens
    _check_prompt(choice.logprobs, ids, as_backend(server.model), TINY_TOL, 1)


@pytest.mark.parametrize("max_tokens", [0, 5])
def test_streamed_echo_equals_the_whole_reply(server, max_tokens):
    """The stream's first piece is the prompt (its entries with it); the pieces and entries add
    up to the whole reply's (greedy, so both decode the same tokens)."""
    client = server.client()
    kwargs = dict(
        model=TINY_MODEL_NAME,
        prompt=PROMPT,
        max_tokens=max_tokens,
        temperature=0,
        echo=True,
        logprobs=1,
    )
    whole = client.completions.create(**kwargs).choices[0]
    text, tokens, values = "", [], []
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].text == PROMPT
    for chunk in chunks:
        if not chunk.choices:
            continue
        text += chunk.choices[0].text
        if chunk.choices[0].logprobs is not None:
            tokens += chunk.choices[0].logprobs.tokens
            values += chunk.choices[0].logprobs.token_logprobs
    assert text == whole.text and tokens == whole.logprobs.tokens
    assert values[0] is None
    assert all(
        math.isclose(a, b, abs_tol=1e-4)  # the completion: two runs of the batch (1.6e-5)
        for a, b in zip(values[1:], whole.logprobs.token_logprobs[1:], strict=True)
    )
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_echo_of_token_id_prompts_as_lm_eval_sends_them(server):
    """A batch of prompts as lists of ids, ``max_tokens: 1``, ``logprobs: 1``, ``echo``: one
    choice per prompt, in order, each with its prompt's entries and one generated token."""
    tok = server.tokenizer
    prompts = [tok("def f(x):", add_special_tokens=False)["input_ids"], [5, 9, 11, 2]]
    reply = server.client().completions.create(
        model=TINY_MODEL_NAME, prompt=prompts, max_tokens=1, temperature=0, logprobs=1, echo=True
    )
    assert [c.index for c in reply.choices] == [0, 1]
    backend = as_backend(server.model)
    for choice, ids in zip(reply.choices, prompts, strict=True):
        assert len(choice.logprobs.token_logprobs) == len(ids) + 1
        _check_prompt(choice.logprobs, ids, backend, TINY_TOL, 1)


def test_echo_on_llama_cpp():
    """SmolLM2-135M on llama.cpp: the prompt's entries from one llama_decode with every
    position's logits, against the replay through the same backend."""
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    from backtrack.models import SMOLLM2_MODEL, load_model

    model, tok = load_model(SMOLLM2_MODEL, backend="llama.cpp", threads=2, progress=False)
    app = create_app(model, tok, ServeSettings(["smollm2"], **SETTINGS))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        reply = client.completions.create(
            model="smollm2", prompt=PROMPT, max_tokens=2, temperature=0, logprobs=3, echo=True
        )
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        choice = reply.choices[0]
        assert choice.text.startswith(PROMPT)
        _check_prompt(choice.logprobs, ids, model, SMOL_TOL, 3)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
