"""The web playground (``GET /``) and the opt-in stream of rollbacks it reads
(``"backtrack": {"trace_stream": true}``).

The stream tests run the real server on loopback (uvicorn in a thread, the tiny model, as
tests/test_serve.py does) and read the raw server-sent events with httpx. The browser test
starts ``backtrack serve`` itself (the CLI, a subprocess, with an API key) and drives Debian's
Chromium headless with playwright: the page asks for the key once, a chaos request streams,
struck-out text appears, and the final text equals the API's for the same seeded request. It
skips only where Chromium is absent and ``CI`` is not set (``scripts/install_browser.sh``
installs it; in CI a missing browser fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from test_serve import PROMPT, LiveServer, _free_port

from backtrack.models.tiny import TINY_MODEL_NAME
from backtrack.serving import ServeSettings

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
# A chaos operator that rolls back often on the tiny model: seeded, so every run is the same.
CHAOS = "chaos:p=0.2,max=3,seed=3"
# The key of the CLI server (given in BACKTRACK_API_KEY), which the page asks for.
KEY = "playground-key"
# Chrome's flags for this machine: no sandbox (root), no GPU, and nothing that reaches out.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server():
    settings = ServeSettings(
        [TINY_MODEL_NAME], max_batch=8, max_queue=64, max_tokens_limit=2000, max_prompt_tokens=512
    )
    with LiveServer(settings) as live:
        yield live


def _chunks(url: str, body: dict) -> list[dict]:
    """Every JSON chunk of a streamed request, in order; checks the stream ends with [DONE]."""
    chunks, done = [], False
    with httpx.stream("POST", url, json=body, timeout=60) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            assert not done, "a chunk after [DONE]"
            if line == "data: [DONE]":
                done = True
            else:
                chunks.append(json.loads(line[len("data: ") :]))
    assert done
    return chunks


def _request(operator: str = CHAOS, **backtrack) -> dict:
    return {
        "model": TINY_MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
        "backtrack": {"operator": operator, **backtrack},
    }


def _replay(events: list[dict], tokenizer) -> str:
    """The completion after ``events``, applied as the page applies them (a token lands at
    its position; a rollback cuts back to its position), decoded in one go as the server
    decodes the final text (token pieces alone may differ at the end: an incomplete UTF-8
    character is held back while streaming)."""
    tokens: list[int] = []
    for event in events:
        del tokens[event["position"] :]
        if event["kind"] == "token":
            tokens.append(event["token_id"])
    return tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------------- the stream
def test_default_stream_is_unchanged(server):
    """Without the option, no chunk carries events: only text, then the choice's end."""
    chunks = _chunks(f"{server.url}/v1/completions", _request())
    *texts, last = chunks
    for chunk in texts:
        (choice,) = chunk["choices"]
        assert set(choice) == {"index", "finish_reason", "text", "logprobs"}
        assert choice["text"] and choice["finish_reason"] is None
    (end,) = last["choices"]
    assert end["text"] == "" and end["finish_reason"] is not None
    assert "events" not in end["backtrack"] and end["backtrack"]["rollbacks"] > 0


def test_trace_stream_adds_only_event_chunks(server):
    """With the option, the text chunks are the same as without it; the rest carry events,
    whose concatenation is the whole-response trace, and replaying them gives the text."""
    url = f"{server.url}/v1/completions"
    plain = _chunks(url, _request())
    traced = _chunks(url, _request(trace_stream=True))
    with_events = [c for c in traced if "events" in c["choices"][0].get("backtrack", {})]
    others = [c for c in traced if c not in with_events]

    def content(chunks):  # what a chunk says, less its id and time
        return [c["choices"] for c in chunks]

    assert content(others) == content(plain)
    for chunk in with_events:
        (choice,) = chunk["choices"]
        assert choice["text"] == "" and choice["finish_reason"] is None
    events = [e for c in with_events for e in c["choices"][0]["backtrack"]["events"]]
    whole = httpx.post(url, json={**_request(trace=True), "stream": False}, timeout=60).json()
    (choice,) = whole["choices"]
    assert events == choice["backtrack"]["trace"]
    assert any(e["kind"] == "rollback" for e in events)
    streamed = "".join(c["choices"][0]["text"] for c in traced)
    assert _replay(events, server.tokenizer) == choice["text"] == streamed


def test_trace_stream_in_chat(server):
    """Chat chunks carrying events have an empty delta: the official client is unaffected."""
    client = server.client()
    messages = [{"role": "user", "content": "Write fib."}]
    common = dict(model=TINY_MODEL_NAME, messages=messages, max_tokens=24, temperature=0)
    extra = {"backtrack": {"operator": CHAOS, "trace_stream": True}}
    stream = client.chat.completions.create(**common, stream=True, extra_body=extra)
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    events = [
        e
        for c in chunks
        for e in (getattr(c.choices[0], "backtrack", None) or {}).get("events", [])
    ]
    whole = client.chat.completions.create(**common, extra_body={"backtrack": {"operator": CHAOS}})
    assert streamed == whole.choices[0].message.content
    assert _replay(events, server.tokenizer) == streamed and events


def test_page_is_served_and_self_contained(server):
    page = httpx.get(f"{server.url}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    for needed in ('id="prompt"', 'id="operator"', 'id="generate"', "trace_stream", "chaos:p=0.2"):
        assert needed in html
    # Offline machines: nothing may be loaded from elsewhere (no CDN, no font service).
    assert "http://" not in html and "https://" not in html and "src=" not in html


# ---------------------------------------------------------------------- the browser
def _browser_or_skip():
    """playwright's sync API, once Chromium and playwright are both there. Missing either
    skips the test on a developer's machine; in CI (``CI`` set) it fails, since the setup
    installs both and a missing one is a broken setup, not a reason to test less."""
    missing = None
    if not Path(CHROMIUM).exists():
        missing = f"{CHROMIUM} is missing: run scripts/install_browser.sh (as root)"
    try:
        from playwright import sync_api
    except ImportError:
        missing = missing or "playwright is not installed: pip install -e '.[test]'"
    if missing is None:
        return sync_api
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


def _banned_words() -> list[str]:
    """Words the tiny model writes greedily after PROMPT (the browser test's ban list)."""
    import re

    from backtrack.engine import Decoder, GenerationConfig
    from backtrack.models.tiny import build_tiny_model

    config = GenerationConfig(max_new_tokens=40, temperature=0)
    text = Decoder(*build_tiny_model()).generate(PROMPT, config=config).text
    return sorted(set(re.findall(r"\w+", text)))[:6]


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """``backtrack serve`` itself, on a free loopback port, serving the tiny model with an API
    key and a ban list named ``hard``."""
    _browser_or_skip()  # before paying for the server
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "BACKTRACK_API_KEY": KEY}
    command = [sys.executable, "-c", "from backtrack.cli import main; main()", "serve"]
    hard = tmp_path_factory.mktemp("lists") / "hard.txt"
    hard.write_text("\n".join(_banned_words()) + "\n")
    args = ["--model", TINY_MODEL_NAME, "--device", "cpu", "--port", str(port),
            "--ban-list", f"hard={hard}"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
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
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _log(log) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-4000:]


def test_browser_streams_struck_text_and_ends_with_the_api_text(cli_server, tmp_path):
    sync_api = _browser_or_skip()
    profile = tempfile.mkdtemp(prefix="playground-chromium-")
    try:
        with sync_api.sync_playwright() as playwright:
            # A fresh profile (playwright passes it as --user-data-dir).
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_FLAGS,
                headless=True,
                viewport={"width": 1000, "height": 640},
            )
            try:
                _drive(context.new_page(), cli_server, tmp_path / "mid-stream.png")
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _drive(page, url: str, shot: Path) -> None:
    # The page asks for the server's key (window.prompt) when an API call gets 401.
    asked: list[str] = []

    def answer(dialog) -> None:
        asked.append(dialog.message)
        dialog.accept(KEY)

    page.on("dialog", answer)
    page.goto(url + "/")
    assert page.title() == "backtrack playground"
    # Record every struck-out element the page ever shows, however briefly.
    page.evaluate(
        """() => {
        window.struckSeen = [];
        new MutationObserver(() => {
            for (const del of document.querySelectorAll("#view del.struck"))
                window.struckSeen.push(del.textContent);
        }).observe(document.getElementById("view"), {childList: true, subtree: true});
    }"""
    )
    page.fill("#prompt", PROMPT)
    page.fill("#operator", CHAOS)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "40")
    page.fill("#seed", "7")
    page.fill("#hold", "500")  # each rollback stays long enough to be photographed
    page.click("#generate")
    struck = page.wait_for_selector("#view del.struck", timeout=60_000)
    style = struck.evaluate("e => getComputedStyle(e).textDecorationLine")
    assert "line-through" in style
    # The page mid-stream can be photographed (scripts/playground_screenshot.py makes the
    # docs' picture this way, with a real model).
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('done')", timeout=120_000
    )
    assert page.evaluate("window.struckSeen.length") > 0
    assert page.query_selector("#view del.struck") is None  # the final view is only the text
    shown = page.text_content("#completion")
    counts = {k: int(page.text_content(f"#n-{k}")) for k in ("rollbacks", "deleted")}
    # Asked once (the page's two calls, /v1/models then the stream, both needed it); the tab
    # keeps the key.
    assert len(asked) == 1 and "API key" in asked[0]
    assert page.evaluate("sessionStorage.getItem('backtrack-api-key')") == KEY

    body = {**_request(), "stream": False, "seed": 7}
    auth = {"Authorization": f"Bearer {KEY}"}
    whole = httpx.post(f"{url}/v1/completions", json=body, headers=auth, timeout=60).json()
    (choice,) = whole["choices"]
    assert shown == choice["text"]
    assert counts == {
        "rollbacks": choice["backtrack"]["rollbacks"],
        "deleted": choice["backtrack"]["tokens_discarded"],
    }
    assert page.text_content("#bans") == ""  # no list named, no ban

    # The server's lists are offered; naming one lists every phrase it removed.
    assert page.evaluate("[...document.querySelectorAll('#lists option')].map(o => o.value)") == [
        "hard"
    ]
    page.fill("#operator", "never")
    page.fill("#ban_lists", "hard")
    page.click("#generate")
    page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('done')", timeout=120_000
    )
    items = [li.text_content() for li in page.query_selector_all("#bans li")]
    words = _banned_words()
    assert items and all(
        i.startswith("removed ") and i.endswith("(list hard, banned)") for i in items
    )
    assert all(any(f"removed {w} " in i for w in words) for i in items)
