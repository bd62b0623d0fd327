"""``backtrack serve``: an OpenAI-compatible server with backtracking, streaming and banned
strings, decoding every request in one continuous batch.

Needs the ``serve`` extra (``pip install 'backtrack-decoding[serve]'``: FastAPI and uvicorn).
"""

from backtrack.serving.app import create_app
from backtrack.serving.scheduler import Scheduler
from backtrack.serving.state import ServeSettings

__all__ = ["Scheduler", "ServeSettings", "create_app"]
