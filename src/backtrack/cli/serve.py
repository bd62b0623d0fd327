"""``backtrack serve``: an OpenAI-compatible HTTP API with backtracking per request."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from backtrack.cli.options import (
    DEFAULT_MODEL,
    ModelOpt,
    err,
    fail,
    load,
    loading_options,
    settings_options,
)
from backtrack.serving.settings import ServeSettings

SERVE_INSTALL_HINT = "pip install 'backtrack[serve]'  (FastAPI and uvicorn)"


@settings_options(ServeSettings, "server")
@loading_options
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    server: dict[str, Any] | None = None,
    loading: dict[str, Any] | None = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with backtracking per request."""
    import socket

    try:
        import uvicorn

        from backtrack.serving import create_app
    except ImportError as exc:
        raise fail(f"serve needs FastAPI and uvicorn ({exc}); {SERVE_INSTALL_HINT}") from exc
    from backtrack.operators import OperatorSpecError, parse_operator

    try:
        settings = ServeSettings(_served_names(model), **(server or {}))
        parse_operator(settings.operator)
    except (ValueError, OperatorSpecError) as exc:
        raise fail(str(exc)) from exc
    # The address is checked before the model loads (minutes for a large one).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    mdl, tok = load(model, **(loading or {}))
    try:
        server_app = create_app(mdl, tok, settings)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    err.print(f"serving {settings.model_names[0]} on http://{host}:{port}/v1")
    uvicorn.run(server_app, host=host, port=port, log_level="warning")


def _served_names(model: str) -> list[str]:
    """The names requests may use for the model: as given, and its built-in name."""
    from backtrack.models import builtin_spec

    spec = builtin_spec(model)
    names = [model]
    if spec is not None and spec.name != model:
        names.append(spec.name)
    return names
