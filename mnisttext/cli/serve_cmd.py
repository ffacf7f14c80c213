"""`mnisttext serve`: the local web page (needs the extra: pip install 'mnisttext[serve]').

    mnisttext serve                       # http://127.0.0.1:8000
    mnisttext serve --port 8080 --checkpoint runs/x/best
"""
from __future__ import annotations

from .common import command


def register(sub) -> None:
    from .. import serve        # defines the flags; fastapi itself is imported only when run
    s = command(sub, "serve", "a local web page: watch digits being written, draw and complete", [
        "mnisttext serve",
        "mnisttext serve --port 8080 --checkpoint runs/x/best"])
    serve.add_args(s)
    s.set_defaults(func=serve.run)
