"""Graceful drain of ``backtrack serve`` (:mod:`backtrack.serving.drain`).

The signal itself is tested on the real thing: ``backtrack serve`` in a subprocess (with its
key in ``BACKTRACK_API_KEY``) gets SIGTERM while a long stream is in flight; new requests get
503 while it drains; once ``--drain-timeout`` passes, the stream ends with ``finish_reason:
"server_shutdown"`` and ``[DONE]``; the process exits 0. What a drain does with each kind of
request is tested on servers in a thread of the test process (the same
:class:`~backtrack.serving.drain.DrainingServer`, its drain started as the signal handler
starts it), where the test can wait for each request to be exactly where it wants it, so
nothing depends on timing: a request in flight finishes within the drain; a second signal
ends a stream, a whole answer and a queued request at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from test_serve import PROMPT, LiveServer, _free_port, _reference

from backtrack.engine import Decoder
from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings
from backtrack.serving.drain import DrainingServer

REPO = Path(__file__).resolve().parents[1]
KEY = "drain-test-key"
DRAIN_TIMEOUT_S = 3
# A request that cannot finish within the drain timeout on any machine: 2,000 tokens of which
# the operator deletes about half again (3,600+ forward passes; 56 s on 2 busy cores, and
# over 3 s even at 1 ms a pass).
LONG = dict(
    model=TINY_MODEL_NAME,
    prompt=PROMPT,
    max_tokens=2000,
    temperature=0,
    extra_body={
        "backtrack": {
            "operator": "chaos:p=0.5,max=1",
            "max_backtracks": 100_000,
            "max_discarded_tokens": 100_000,
        }
    },
)


def _log(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def _wait_draining(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(f"{url}/health", timeout=10)
        if health.status_code == 503:
            assert health.json()["status"] == "draining"
            return
        assert time.monotonic() < deadline, "the server did not start draining"
        time.sleep(0.02)


def _assert_refused(client: openai.OpenAI) -> None:
    """A new request while the server drains: a 503 saying so."""
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=TINY_MODEL_NAME, prompt=PROMPT, max_tokens=4)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "shutting_down"


def test_sigterm_ends_a_stream_in_flight_with_server_shutdown_and_exits_0():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BACKTRACK_API_KEY": KEY}
    command = [sys.executable, "-c", "from backtrack.cli import main; main()", "serve"]
    args = ["--model", TINY_MODEL_NAME, "--device", "cpu", "--port", str(port)]
    args += ["--drain-timeout", str(DRAIN_TIMEOUT_S)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command + args, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                assert process.poll() is None, _log(log)
                assert time.monotonic() < deadline, "backtrack serve did not start\n" + _log(log)
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
            raw = client.completions.with_raw_response.create(
                **LONG, stream=True, stream_options={"include_usage": True}
            )
            chunks = iter(raw.parse())
            first = next(chunks)  # the stream is in flight
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _wait_draining(url)
            _assert_refused(client)
            rest = list(chunks)
            ended = time.monotonic()
            status = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        output = _log(log)
    assert status == 0, output
    *texts, end, usage = [first, *rest]
    (choice,) = end.choices
    assert choice.finish_reason == "server_shutdown"
    assert choice.backtrack["finish_reason"] == "server_shutdown"
    assert ended - signalled >= DRAIN_TIMEOUT_S  # the stream had its drain time first
    text = "".join(c.choices[0].text for c in texts)
    assert text and usage.usage.completion_tokens > 0
    # The server's log: the drain, and the stream's access line with its request id.
    assert "SIGTERM: draining" in output and "the drain timeout passed" in output
    rid = raw.headers["x-request-id"]
    assert f'{rid} 127.0.0.1 "POST /v1/completions" 200' in output


class DrainingLiveServer(LiveServer):
    """tests/test_serve.py's server in a thread, as a :class:`DrainingServer`."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(settings)
        self.server = DrainingServer(self.server.config, self.app.state.server)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def signal(self) -> None:
        """What SIGTERM or SIGINT does (a thread's server installs no handlers)."""
        loop = self.server._loop
        assert loop is not None
        loop.call_soon_threadsafe(self.server.begin_drain, "SIGTERM")

    def stopped(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def test_a_request_in_flight_finishes_during_the_drain():
    settings = ServeSettings([TINY_MODEL_NAME], drain_timeout=600, max_tokens_limit=2000)
    with DrainingLiveServer(settings) as live:
        client = live.client()
        stream = client.completions.create(
            model=TINY_MODEL_NAME,
            prompt=PROMPT,
            max_tokens=100,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = iter(stream)
        first = next(chunks)
        live.signal()
        _wait_draining(live.url)
        _assert_refused(client)
        *texts, end, usage = [first, *chunks]
        drained = time.monotonic()
        assert end.choices[0].finish_reason == "length" and usage.usage.completion_tokens == 100
        expected = _reference(
            Decoder(live.model, live.tokenizer), max_new_tokens=100, temperature=0
        )
        assert "".join(c.choices[0].text for c in texts) == expected.text
        # Nothing left in flight: the server stops without waiting for its drain timeout.
        assert live.stopped(timeout=60) and time.monotonic() - drained < 60


def test_a_second_signal_ends_every_request_at_once():
    """A stream, a whole answer and a queued request, each ended as it is."""
    settings = ServeSettings(
        [TINY_MODEL_NAME], drain_timeout=600, max_batch=2, max_tokens_limit=2000
    )
    with DrainingLiveServer(settings) as live, ThreadPoolExecutor(2) as pool:
        client = live.client()
        stream = client.completions.create(**LONG, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        whole = pool.submit(client.completions.create, **LONG)
        _wait_for(lambda: live.scheduler.live_rows == 2)
        queued = pool.submit(client.completions.create, **LONG)
        _wait_for(lambda: live.scheduler.queued() == 1)
        live.signal()
        _wait_draining(live.url)
        live.signal()  # the second: no more waiting
        started = time.monotonic()
        end = [first, *chunks][-1]
        assert end.choices[0].finish_reason == "server_shutdown"
        decoded = whole.result(timeout=60).choices[0]
        assert decoded.finish_reason == "server_shutdown" and decoded.text
        waiting = queued.result(timeout=60)
        assert waiting.choices[0].finish_reason == "server_shutdown"
        assert waiting.choices[0].text == "" and waiting.usage.completion_tokens == 0
        assert waiting.usage.prompt_tokens == whole.result().usage.prompt_tokens > 0
        assert live.stopped(timeout=60) and time.monotonic() - started < 60


def _wait_for(condition) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)
