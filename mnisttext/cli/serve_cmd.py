"""`mnisttext serve`: the local web page (needs the extra: pip install 'mnisttext[serve]').

    mnisttext serve                       # http://127.0.0.1:8000
    mnisttext serve --port 8080 --checkpoint runs/x/best
"""
from __future__ import annotations

from .common import command, device_arg, int_range


def register(sub) -> None:
    from .. import serve        # defines the flags; fastapi itself is imported only when run
    s = command(sub, "serve", "a local web page: watch digits being written, draw and complete", [
        "mnisttext serve",
        "mnisttext serve --port 8080 --checkpoint runs/x/best"])
    serve.add_args(s)
    # the CLI's checked types: a bad port or device is refused before anything is bound
    checked = {"--port": int_range(0, 65535), "--device": device_arg,
               "--max-queue": int_range(1, 10_000), "--max-candidates": int_range(1, 1024)}
    for action in s._actions:
        for opt in action.option_strings:
            if opt in checked:
                action.type = checked[opt]
    s.set_defaults(func=serve.run)
