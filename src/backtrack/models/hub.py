"""Whether a Hugging Face hub id can load now, decided in seconds rather than after retries.

Why: on a machine that cannot reach the hub, transformers retries with backoff for about 50 s
before failing. :func:`hub_access` probes the hub's TCP port once and answers at once: load from
the local Hugging Face cache, load from the hub, or a one-line error.
"""

from __future__ import annotations

from typing import Any

from backtrack.errors import ModelLoadError
from backtrack.models.catalogue import BUILTIN_MODELS

__all__ = ["HUB_PROBE_TIMEOUT_S", "hub_access", "hub_unreachable_reason"]


# How long to wait for the hub's TCP handshake before calling it unreachable. Reachable hosts
# answer within a round trip (tens of ms); without this probe, transformers retries an
# unreachable hub with backoff for about 50 s before its error.
HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable_reason(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` (the hub's URL) cannot be reached over TCP, or None if it can."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    if not url.hostname:
        return f"{endpoint!r} is not a URL"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def hub_access(name: str, cache_dir: str | None = None) -> dict[str, Any]:
    """``from_pretrained`` arguments for hub id ``name``, or a one-line error at once.

    A model in the local Hugging Face cache loads from it when the hub is offline
    (``HF_HUB_OFFLINE``) or unreachable; a model that is not cached needs the hub, so an
    unreachable hub is an error now rather than after a minute of retries.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json", cache_dir=cache_dir), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise ModelLoadError(
            f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"built-in models: {', '.join(BUILTIN_MODELS)}"
        )
    reason = hub_unreachable_reason(constants.ENDPOINT)
    if reason is None:
        return {}
    if cached:
        return {"local_files_only": True}
    raise ModelLoadError(
        f"model {name!r} is not a built-in name, a local directory or in the local Hugging Face "
        f"cache, and the hub ({constants.ENDPOINT}) is unreachable ({reason}); built-in "
        f"models: {', '.join(BUILTIN_MODELS)}"
    )
