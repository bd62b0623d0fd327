"""API keys of ``backtrack serve``: where they come from, and how a request's key is checked.

With keys set (``--api-key``, ``--api-key-file``, ``BACKTRACK_API_KEY``), every ``/v1`` route
and ``/metrics`` need ``Authorization: Bearer KEY`` (what OpenAI clients send from their
``api_key``); ``/health``, the playground page and the OpenAPI schema stay open. The check
(:func:`authorized`) compares SHA-256 digests of the key sent and of each server key with
:func:`hmac.compare_digest`, over every key, so neither the time it takes nor an early exit
tells a client how much of a key it got right (or how long a key is).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from pathlib import Path

# Paths under these prefixes need the key (when the server has one).
PROTECTED_PREFIXES = ("/v1/", "/metrics")
PROTECTED_PATHS = ("/v1", "/metrics")


def check_api_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The keys, checked: each non-empty, printable and without whitespace (a header could
    not carry it otherwise)."""
    checked = tuple(keys)
    for key in checked:
        if not key or not key.isprintable() or any(c.isspace() for c in key):
            raise ValueError("an API key must be non-empty, printable and without whitespace")
    return checked


def read_api_key_file(path: str | Path) -> list[str]:
    """The keys of a key file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    keys = [line.strip() for line in lines]
    keys = [key for key in keys if key and not key.startswith("#")]
    if not keys:
        raise ValueError(f"the API key file {path} holds no key")
    return keys


def needs_key(path: str) -> bool:
    """Whether a request to ``path`` must carry a key (when the server has any)."""
    return path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest()


def bearer_token(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header; ``None`` if there is none."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def authorized(token: str, keys: Sequence[str]) -> bool:
    """Whether ``token`` is one of ``keys``, compared in constant time (see the module)."""
    sent = _digest(token)
    match = False
    for key in keys:  # every key, even after a match
        match |= hmac.compare_digest(sent, _digest(key))
    return match


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine.
    Any other host name counts as reachable from elsewhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
