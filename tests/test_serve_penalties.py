"""Penalties through the server: the OpenAI fields (presence_penalty, frequency_penalty,
logit_bias) and the vLLM/llama.cpp ones (repetition_penalty, DRY) reach the engine, through
the official ``openai`` client on a real loopback server; bad values are OpenAI-shaped errors.
"""

from __future__ import annotations

import httpx
import pytest
from test_serve import PROMPT, LiveServer, _error, _reference

from backtrack.engine import Decoder
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings


@pytest.fixture(scope="module")
def server():
    settings = ServeSettings([TINY_MODEL_NAME], max_batch=4, max_queue=16, max_tokens_limit=200)
    with LiveServer(settings) as live:
        yield live


PENALTIES = dict(
    presence_penalty=0.5,
    frequency_penalty=0.3,
    logit_bias={"42": 4.0, "17": -100},
    repetition_penalty=1.2,
    dry_multiplier=0.8,
    dry_base=2.0,
    dry_allowed_length=1,
    dry_sequence_breakers=["\n"],
)


def test_penalties_reach_the_engine(server):
    openai_fields = ("presence_penalty", "frequency_penalty", "logit_bias")
    reply = server.client().completions.create(
        model=TINY_MODEL_NAME,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        **{k: PENALTIES[k] for k in openai_fields},
        extra_body={k: v for k, v in PENALTIES.items() if k not in openai_fields},
    )
    decoder = Decoder(server.model, server.tokenizer)
    expected = _reference(decoder, max_new_tokens=24, temperature=0, **PENALTIES)
    plain = _reference(decoder, max_new_tokens=24, temperature=0)
    assert reply.choices[0].text == expected.text != plain.text


@pytest.mark.parametrize(
    ("changes", "status", "words"),
    [
        ({"presence_penalty": 3}, 422, "presence_penalty"),
        ({"repetition_penalty": 0}, 422, "repetition_penalty"),
        ({"dry_base": 1.0}, 422, "dry_base"),
        ({"logit_bias": {"x": 1}}, 400, "logit_bias keys must be token ids"),
        ({"logit_bias": {"5": 300}}, 400, "logit_bias[5] must be in [-100, 100]"),
        ({"logit_bias": {"99999": 1}}, 400, "outside the vocabulary"),
    ],
)
def test_bad_penalties_get_openai_errors(server, changes, status, words):
    body = {"model": TINY_MODEL_NAME, "prompt": PROMPT, "max_tokens": 4, **changes}
    response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = _error(response)
    assert words in error["message"]
    if status == 400:
        assert error["param"] == "logit_bias"
