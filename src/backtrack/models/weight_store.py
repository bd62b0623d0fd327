"""The on-disk cache of converted models: atomic builds, manifests, validation, rebuilds.

Layout (``$BACKTRACK_CACHE``, default ``platformdirs.user_cache_dir("backtrack")``)::

    <cache>/models/
        <name>--<sha256[:16]>--v<FORMAT>/      one finished entry (a transformers model dir)
            config.json, generation_config.json, model.safetensors, tokenizer.json, ...
            backtrack-manifest.json            written last: source, sizes and sha256 of files
        .tmp-<name>--<pid>-<random>/           a build in progress (never loaded)
        .trash-<name>-<random>/                an entry being deleted

Why this shape: a build (assemble, verify, dequantize, save) takes a minute and can be killed at
any point. It runs in a temp dir on the same filesystem and becomes visible only through one
``rename``, so an interrupted build leaves no entry. The entry name carries the source sha256,
so a new model version never reuses an old conversion. Loads check the manifest and every
file's size (cheap); hashing the files again is available (``verify_entry(deep=True)``) but not
done on every load, because hashing a gigabyte costs more than loading it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from backtrack.errors import ModelLoadError
from backtrack.models.packaged import report_step, sha256_file

FORMAT_VERSION = 1
MANIFEST_NAME = "backtrack-manifest.json"
CACHE_ENV = "BACKTRACK_CACHE"
STALE_TMP_SECONDS = 24 * 3600


class CorruptEntryError(ModelLoadError):
    """A cache entry exists but fails validation; it will be rebuilt."""


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$BACKTRACK_CACHE``, else the user cache dir."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("backtrack"))


def models_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / "models"


def entry_key(name: str, source_sha256: str) -> str:
    """Folder name of a converted model; changes whenever the source or the format changes."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return f"{safe}--{source_sha256[:16]}--v{FORMAT_VERSION}"


def entry_path(
    name: str, source_sha256: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    return models_dir(cache_dir) / entry_key(name, source_sha256)


def read_manifest(entry: Path) -> dict[str, Any]:
    """Parse an entry's manifest or raise :class:`CorruptEntryError`."""
    path = entry / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CorruptEntryError(f"{entry} has no {MANIFEST_NAME} (unfinished build?)") from exc
    except (OSError, ValueError) as exc:
        raise CorruptEntryError(f"{path} is unreadable: {exc}") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (
        not isinstance(files, dict)
        or not isinstance(manifest.get("source"), dict)
        or not all(isinstance(v, dict) for v in files.values())
    ):
        raise CorruptEntryError(f"{path} is not a backtrack manifest")
    return manifest


def verify_entry(
    entry: Path, source_sha256: str, *, deep: bool = False, kind: str = "transformers"
) -> dict[str, Any]:
    """Check an entry against its manifest; raise :class:`CorruptEntryError` with the reason.

    The default checks presence and exact size of every recorded file (milliseconds);
    ``deep=True`` also re-hashes them (seconds per gigabyte). ``kind``: ``transformers`` (a
    converted model directory) or ``gguf`` (the assembled GGUF and its tokenizer).
    """
    if not entry.is_dir():
        raise CorruptEntryError(f"{entry} does not exist")
    manifest = read_manifest(entry)
    if manifest.get("format") != FORMAT_VERSION:
        raise CorruptEntryError(f"{entry}: manifest format {manifest.get('format')!r}")
    recorded = manifest.get("source", {}).get("sha256")
    if recorded != source_sha256:
        raise CorruptEntryError(f"{entry}: built from {recorded}, expected {source_sha256}")
    files: Mapping[str, Any] = manifest["files"]
    config, weights = (
        ("tokenizer_config.json", ".gguf") if kind == "gguf" else ("config.json", ".safetensors")
    )
    if config not in files or not any(f.endswith(weights) for f in files):
        raise CorruptEntryError(f"{entry}: manifest lists no {config} or no weights")
    for rel, info in files.items():
        path = entry / rel
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CorruptEntryError(f"{entry}: {rel} is missing") from exc
        if size != info.get("size"):
            raise CorruptEntryError(f"{entry}: {rel} has {size} bytes, expected {info.get('size')}")
        if deep and sha256_file(path) != info.get("sha256"):
            raise CorruptEntryError(f"{entry}: {rel} does not match its recorded sha256")
    return manifest


def write_manifest(out_dir: Path, source: Mapping[str, Any], extra: Mapping[str, Any]) -> None:
    """Record every file in ``out_dir`` (size and sha256); the manifest is the completion mark."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(out_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(out_dir).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": FORMAT_VERSION,
        "source": dict(source),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    tmp = out_dir / (MANIFEST_NAME + ".part")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(out_dir / MANIFEST_NAME)


def remove_entry(entry: Path) -> None:
    """Delete an entry by first renaming it out of the way, so no half-deleted entry is seen."""
    if not entry.exists():
        return
    trash = entry.parent / f".trash-{entry.name}-{secrets.token_hex(4)}"
    try:
        entry.rename(trash)
    except OSError:
        trash = entry
    shutil.rmtree(trash, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(root: Path) -> None:
    """Remove temp/trash dirs left by killed processes (dead pid on this host, or a day old)."""
    if not root.is_dir():
        return
    host = socket.gethostname()
    now = time.time()
    for child in root.iterdir():
        if child.name.startswith(".trash-"):
            shutil.rmtree(child, ignore_errors=True)
            continue
        if not child.name.startswith(".tmp-"):
            continue
        owner = child / ".owner"
        try:
            owner_host, owner_pid = owner.read_text().split()
            dead = owner_host == host and not _pid_alive(int(owner_pid))
        except (OSError, ValueError):
            dead = False
        try:
            old = now - child.stat().st_mtime > STALE_TMP_SECONDS
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(child, ignore_errors=True)


def build_entry(
    entry: Path,
    build: Callable[[Path, Path], None],
    *,
    source: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    progress: bool = False,
    kind: str = "transformers",
) -> Path:
    """Run ``build(work_dir, out_dir)`` in a temp dir and publish ``out_dir`` as ``entry``.

    ``build`` may use ``work_dir`` for scratch files (the assembled GGUF), which are deleted;
    it must fill ``out_dir`` with a model directory. Any exception, including
    ``KeyboardInterrupt``, leaves no entry and no temp dir behind.
    """
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    tmp = root / f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        (tmp / ".owner").write_text(f"{socket.gethostname()} {os.getpid()}")
        work, out = tmp / "work", tmp / "out"
        work.mkdir()
        out.mkdir()
        build(work, out)
        shutil.rmtree(work)
        report_step(progress, "hashing the converted files for the manifest")
        write_manifest(out, source, extra or {})
        try:
            out.rename(entry)
        except OSError:
            # Another process published the same entry first; keep theirs if it is sound.
            try:
                verify_entry(entry, str(source.get("sha256")), kind=kind)
            except CorruptEntryError:
                remove_entry(entry)
                out.rename(entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry
