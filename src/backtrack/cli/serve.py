"""``backtrack serve``: an OpenAI-compatible HTTP API with backtracking per request."""

from __future__ import annotations

from pathlib import Path
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

SERVE_INSTALL_HINT = (
    "pip install 'backtrack-decoding[serve]'  (FastAPI, uvicorn, prometheus-client)"
)
API_KEY_ENV = "BACKTRACK_API_KEY"


@settings_options(ServeSettings, "server")
@loading_options
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    server: dict[str, Any] | None = None,
    ban_list: Annotated[
        list[str] | None,
        typer.Option(
            "--ban-list",
            help="NAME=PATH: a ban list (text, one phrase per line, or antislop JSON) loaded "
            "and compiled once at start; requests name it in backtrack.ban_lists (repeatable).",
        ),
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            metavar="KEY",
            help="Key clients must send as 'Authorization: Bearer KEY' (repeatable; in "
            f"{API_KEY_ENV}, several separated by spaces). A key on the command line is "
            "visible to every user of this machine in ps: prefer --api-key-file or "
            f"{API_KEY_ENV}.",
            show_default=False,
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File of API keys, one a line ('#' comments).", metavar="PATH", show_default=False
        ),
    ] = None,
    no_api_key: Annotated[
        bool,
        typer.Option(
            "--no-api-key",
            help="Serve without a key on a non-loopback --host (refused otherwise).",
        ),
    ] = False,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Log one line per request on stderr (request id, client, method, path, "
            "status, seconds, and the error of a refused one); warnings and errors always."
        ),
    ] = True,
    loading: dict[str, Any] | None = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with backtracking per request."""
    import socket

    try:
        import uvicorn

        from backtrack.serving import create_app
        from backtrack.serving.drain import FLUSH_S, DrainingServer
    except ImportError as exc:
        raise fail(f"serve needs its extra ({exc}); {SERVE_INSTALL_HINT}") from exc
    from backtrack.operators import OperatorSpecError, parse_operator

    keys = _api_keys(api_key or [], api_key_file, no_api_key, host)
    try:
        settings = ServeSettings(
            _served_names(model),
            **(server or {}),
            api_keys=keys,
            ban_lists=_ban_lists(ban_list or []),
        )
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
    _log_to_stderr(access_log)
    key_note = f" ({len(keys)} API key{'s' if len(keys) > 1 else ''})" if keys else ""
    err.print(f"serving {settings.model_names[0]} on http://{host}:{port}/v1{key_note}")
    config = uvicorn.Config(
        server_app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # the app logs each request, with its id
        timeout_graceful_shutdown=int(FLUSH_S),
    )
    DrainingServer(config, server_app.state.server).run()


def _api_keys(given: list[str], key_file: Path | None, no_key: bool, host: str) -> list[str]:
    """The server's API keys (command line or environment, and the file), checked against
    ``--no-api-key`` and the address: serving beyond loopback needs a key or an explicit
    ``--no-api-key``."""
    from backtrack.serving.auth import check_api_keys, is_loopback, read_api_key_file

    keys = list(given)
    try:
        if key_file is not None:
            keys += read_api_key_file(key_file)
        check_api_keys(keys)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    if keys and no_key:
        raise fail(
            "--no-api-key contradicts the API keys given (--api-key, --api-key-file or "
            f"{API_KEY_ENV})"
        )
    if not keys and not no_key and not is_loopback(host):
        raise fail(
            f"serving on {host} (not loopback) without an API key: give --api-key-file, "
            f"{API_KEY_ENV} or --api-key, or --no-api-key to serve without one"
        )
    return keys


def _log_to_stderr(access_log: bool) -> None:
    """The server's log lines on stderr: one per request (INFO, with its id) if
    ``access_log``; warnings and errors always."""
    import logging

    logger = logging.getLogger("backtrack.serving")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if access_log else logging.WARNING)
    logger.propagate = False


def _ban_lists(entries: list[str]) -> dict[str, str]:
    """``--ban-list NAME=PATH`` flags as ``{name: path}`` (checked before the model loads)."""
    lists: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise fail(f"--ban-list takes NAME=PATH, got {entry!r}")
        if name in lists:
            raise fail(f"--ban-list {name!r} is given twice")
        lists[name] = path
    return lists


def _served_names(model: str) -> list[str]:
    """The names requests may use for the model: as given, and its built-in name."""
    from backtrack.models import builtin_spec

    spec = builtin_spec(model)
    names = [model]
    if spec is not None and spec.name != model:
        names.append(spec.name)
    return names
