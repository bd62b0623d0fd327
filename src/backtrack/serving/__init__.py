"""``backtrack serve``: an OpenAI-compatible server with backtracking, streaming and banned
strings, decoding every request in one continuous batch.

Needs the ``serve`` extra (``pip install 'backtrack-decoding[serve]'``: FastAPI, uvicorn and
prometheus-client). The names below load on first use, so that the command line reads
:class:`ServeSettings`' declarations (its flags) without importing FastAPI or torch.
"""

from __future__ import annotations

from backtrack.lazy import lazy_exports

# Each module -> the public names it defines.
_EXPORTS = {
    "backtrack.serving.app": ("create_app",),
    "backtrack.serving.scheduler": ("Scheduler",),
    "backtrack.serving.settings": ("ServeSettings",),
}
__getattr__, __dir__, __all__ = lazy_exports(globals(), _EXPORTS)
