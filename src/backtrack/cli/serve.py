"""``backtrack serve``: an OpenAI-compatible HTTP API with backtracking per request."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backtrack.cli.options import (
    DEFAULT_BACKEND,
    DEFAULT_MODEL,
    BackendOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    NCtxOpt,
    QuantizeOpt,
    ThreadsOpt,
    err,
    eval_default,
    fail,
    load,
)

SERVE_INSTALL_HINT = (
    "pip install 'backtrack-decoding[serve]'  (FastAPI, uvicorn, prometheus-client)"
)
API_KEY_ENV = "BACKTRACK_API_KEY"


def serve(
    model: ModelOpt = DEFAULT_MODEL,
    operator: Annotated[
        str,
        typer.Option(
            "--operator", "-o", help="Default operator of requests that name none (never)."
        ),
    ] = "never",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together.")] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests that may wait for a row; more get 503.")
    ] = 256,
    max_tokens_limit: Annotated[
        int, typer.Option(help="Largest max_tokens a request may ask for.")
    ] = 2048,
    max_prompt_tokens: Annotated[int, typer.Option(help="Longest prompt accepted.")] = 8192,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 4_000_000,
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
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="On SIGTERM or SIGINT, seconds requests in flight may take to finish before "
            "they end with finish_reason 'server_shutdown'; new requests get 503."
        ),
    ] = 30.0,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Log one line per request on stderr (request id, client, method, path, "
            "status, seconds, and the error of a refused one); warnings and errors always."
        ),
    ] = True,
    ignore_unknown_fields: Annotated[
        bool,
        typer.Option(
            "--ignore-unknown-fields",
            help="Ignore (and log once) unknown top-level request fields instead of "
            "refusing them with a 400.",
        ),
    ] = False,
    dtype: DtypeOpt = eval_default("dtype"),
    device: DeviceOpt = eval_default("device"),
    quantize: QuantizeOpt = eval_default("quantize"),
    backend: BackendOpt = DEFAULT_BACKEND,
    threads: ThreadsOpt = eval_default("threads"),
    n_ctx: NCtxOpt = eval_default("n_ctx"),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with backtracking per request."""
    import socket

    try:
        import uvicorn

        from backtrack.serving import ServeSettings, create_app
        from backtrack.serving.drain import FLUSH_S, DrainingServer
    except ImportError as exc:
        raise fail(f"serve needs its extra ({exc}); {SERVE_INSTALL_HINT}") from exc
    from backtrack.operators import OperatorSpecError, parse_operator

    try:
        parse_operator(operator)
    except OperatorSpecError as exc:
        raise fail(str(exc)) from exc
    keys = _api_keys(api_key or [], api_key_file, no_api_key, host)
    # The address is checked before the model loads (minutes for a large one).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        settings = ServeSettings(
            _served_names(model),
            operator=operator,
            max_batch=max_batch,
            max_queue=max_queue,
            max_tokens_limit=max_tokens_limit,
            max_prompt_tokens=max_prompt_tokens,
            max_body_bytes=max_body_bytes,
            ban_lists=_ban_lists(ban_list or []),
            api_keys=keys,
            drain_timeout=drain_timeout,
            ignore_unknown_fields=ignore_unknown_fields,
        )
    except ValueError as exc:
        raise fail(str(exc)) from exc
    mdl, tok = load(model, dtype, device, quantize, backend, threads, n_ctx)
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
