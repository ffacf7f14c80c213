"""A local web page and JSON API on one model: watch digits being written, draw and complete.

    pip install 'mnisttext[serve]'
    mnisttext serve                                  # http://127.0.0.1:8000/
    mnisttext serve --port 0 --checkpoint runs/x/best

    from mnisttext import api, serve
    app = serve.create_app(api.load())               # any ASGI server; uvicorn in `run`

Everything is local: the page is the static files in mnisttext/static (no CDN, no build step) and
its Content-Security-Policy lets it talk to this server only. Endpoints (docs/web.md has the
JSON in and out): GET /api/info, GET /api/examples, POST /api/generate, /api/complete,
/api/classify, /api/decode, /api/encode, and the server-sent-event streams
POST /api/stream/generate and /api/stream/complete.

Every model call goes through one worker thread, in arrival order: the model is not thread-safe
and the machine may have two cores, so a queue beats threads fighting over them. Bad input gets
a 4xx with {"error": message, "field": name}; past `max_queue` waiting calls a 503.
"""
import argparse
import asyncio
import base64
import contextlib
import functools
import io
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import codec

STATIC = Path(__file__).resolve().parent / "static"
PNG_SCALE = 4                 # 30x30 -> 120x120 PNGs in JSON
MAX_BODY = 1 << 20            # bytes; the largest real request (a 30x30 list) is ~2 KB
MAX_SAMPLES = 64              # completions per request
INSTALL_HINT = "the web server needs FastAPI and uvicorn: pip install 'mnisttext[serve]'"
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

EPILOG = """examples:
  mnisttext serve                        # the shipped checkpoints on http://127.0.0.1:8000/
  mnisttext serve --port 8080 --checkpoint runs/x/best
  mnisttext serve --port 0 --device cpu  # any free port (the URL is printed)
"""


class ApiError(Exception):
    """A request we refuse: status, message and the JSON field it is about."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class _Cancelled(Exception):
    """Raised from on_step to stop a generation whose client has gone."""


def _fastapi():
    try:
        import fastapi  # the optional [serve] extra: imported only when serving
        import pydantic  # noqa: F401  (the request schemas)
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return fastapi


# ---------------------------------------------------------------------------------------------
# the model worker

class ModelWorker:
    """Runs model calls one at a time on its own thread, in arrival order, under model.lock."""

    def __init__(self, model, max_queue: int = 64):
        self.model = model
        self.max_queue = max_queue
        self.pending = 0
        self._count = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mnisttext-model")

    def submit(self, fn, /, **kwargs) -> tuple[asyncio.Future, int]:
        """Queue fn(**kwargs) -> (awaitable result, calls ahead of it); a 503 if the queue is full."""
        with self._count:
            if self.pending >= self.max_queue:
                raise ApiError(503, f"the server is busy ({self.pending} requests queued); "
                                    "try again in a few seconds")
            ahead = self.pending
            self.pending += 1

        def job():
            try:
                with self.model.lock:
                    return fn(**kwargs)
            finally:
                with self._count:
                    self.pending -= 1

        try:
            fut = self._pool.submit(job)
        except RuntimeError:          # shut down
            with self._count:
                self.pending -= 1
            raise ApiError(503, "the server is shutting down") from None
        return asyncio.wrap_future(fut), ahead

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# request bodies: pydantic models, so that out-of-range numbers get a 422 naming the field

@functools.lru_cache(maxsize=None)
def _schemas():
    # Built on first use so that importing this module needs no pydantic. FastAPI reads these
    # annotations at route definition, so this module must not use `from __future__ import
    # annotations` (string annotations would be looked up in module globals and not found).
    from typing import Optional  # only these schemas use it

    from pydantic import BaseModel, ConfigDict, Field  # the optional [serve] extra: imported only when serving

    class Body(BaseModel):
        model_config = ConfigDict(extra="forbid")      # a misspelt field is an error, not ignored

    class Sampling(Body):
        temperature: float = Field(0.8, ge=0, le=3)
        top_k: Optional[int] = Field(None, ge=1, le=1024)
        top_p: Optional[float] = Field(None, gt=0, le=1)
        seed: int = Field(0, ge=0, le=2**32 - 1)

    class Generate(Sampling):
        digit: int = Field(..., ge=0, le=9)
        candidates: int = Field(64, ge=1)               # upper bound: model.max_candidates
        keep: int = Field(8, ge=1)                      # upper bound: candidates

    class Image(Body):
        line: Optional[str] = Field(None, max_length=4096)
        levels: Optional[list[list[int]]] = Field(None, max_length=64)
        label: Optional[int] = Field(None, ge=0, le=9)

    class Complete(Image, Sampling):
        rows: int = Field(15, ge=0, le=codec.SIDE - 1)
        samples: int = Field(6, ge=1, le=MAX_SAMPLES)

    class Decode(Body):
        line: str = Field(..., max_length=4096)

    class Encode(Body):
        levels: Optional[list[list[int]]] = Field(None, max_length=64)
        image: Optional[list[list[int]]] = Field(None, max_length=64)
        label: int = Field(0, ge=0, le=9)

    return Generate, Image, Complete, Decode, Encode


# ---------------------------------------------------------------------------------------------
# conversions

def png_b64(levels: np.ndarray, scale: int = PNG_SCALE) -> str:
    """(30, 30) 0/1 levels -> base64 PNG, white ink on black as in MNIST, upscaled."""
    from PIL import Image  # pillow: only the PNG helpers need it
    big = np.kron(np.asarray(levels, dtype=np.uint8) * 255, np.ones((scale, scale), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG", optimize=True)        # uint8 2-D: mode L
    return base64.b64encode(buf.getvalue()).decode("ascii")


def parse_line(line: str, field: str = "line") -> tuple[int, np.ndarray]:
    try:
        return codec.decode(line.strip())
    except codec.CodecError as e:
        raise ApiError(422, f"{field}: {e}", field) from None


def parse_grid(grid, field: str, side: int, top: int) -> np.ndarray:
    """A list of `side` lists of `side` ints in 0..top -> (side, side) uint8, or a 422 for field."""
    if len(grid) != side or any(len(row) != side for row in grid):
        widths = sorted({len(r) for r in grid})
        shape = f"{len(grid)} rows of {'/'.join(map(str, widths)) or 0} pixels"
        raise ApiError(422, f"{field}: expected {side} rows of {side} pixels, got {shape}", field)
    arr = np.asarray(grid, dtype=np.int64)
    if arr.min() < 0 or arr.max() > top:
        raise ApiError(422, f"{field}: pixel values must be in 0..{top}, got "
                            f"{arr.min()}..{arr.max()}", field)
    return arr.astype(np.uint8)


def image_of(body) -> tuple[int, np.ndarray, str]:
    """A body with exactly one of `line` or `levels` -> (label, levels, line)."""
    if (body.line is None) == (body.levels is None):
        field = "line" if body.line is None else "levels"
        raise ApiError(422, f"{field}: give exactly one of `line` (a text line) or `levels` "
                            "(30x30 0/1)", field)
    if body.line is not None:
        label, levels = parse_line(body.line)
        label = label if body.label is None else body.label
    else:
        levels = parse_grid(body.levels, "levels", codec.SIDE, 1)
        label = body.label or 0
    return label, levels, codec.encode_levels(levels[None], [label])[0]


def generation_json(g, seconds: float) -> dict:
    kept = [int(i) for i in g.kept]
    scores = [float(s) for s in np.asarray(g.scores)]
    levels = codec.decode_batch([g.lines[i] for i in kept])[1] if kept else []
    return {"digit": int(g.digit), "lines": list(g.lines), "scores": scores, "kept": kept,
            "best": [{"index": i, "line": g.lines[i], "score": scores[i], "png": png_b64(lv)}
                     for i, lv in zip(kept, levels)],
            "seconds": round(seconds, 3)}


def completion_json(lines: list[str], rows: int, seconds: float) -> dict:
    levels = codec.decode_batch(lines)[1]
    return {"rows": rows, "lines": list(lines), "pngs": [png_b64(lv) for lv in levels],
            "seconds": round(seconds, 3)}


def _sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# ---------------------------------------------------------------------------------------------
# the app

def create_app(model, examples: list[str] | None = None, max_queue: int = 64,
               max_candidates: int = 256):
    """The FastAPI app serving the page and the API on `model` (see mnisttext.api.load).

    examples: test lines offered by GET /api/examples (default: mnisttext.api.examples());
    max_queue: model calls allowed to wait (more get 503); max_candidates: per generate request
    (and never more than model.max_candidates): 256 take ~5 s of the model on two cores."""
    fastapi = _fastapi()
    from fastapi.staticfiles import StaticFiles  # the optional [serve] extra: imported only when serving

    worker = ModelWorker(model, max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.shutdown()

    # no /docs: FastAPI's Swagger page loads its scripts from a CDN, and nothing here may
    app = fastapi.FastAPI(title="mnisttext", version="1", docs_url=None, redoc_url=None,
                          openapi_url="/api/openapi.json", lifespan=lifespan)
    app.state.worker = worker
    app.state.model = model
    app.state.examples = examples
    app.state.max_candidates = min(max_candidates, int(getattr(model, "max_candidates", 256)))
    _add_error_handlers(app)
    app.add_middleware(_Guard)
    _add_model_routes(app, worker, model)
    _add_codec_routes(app)
    _add_stream_routes(app, worker, model)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _error(status: int, message: str, field: str | None, headers=None, **extra):
    """The one error shape: {"error": message, "field": name or null, ...extra}."""
    from fastapi.responses import JSONResponse  # the optional [serve] extra: imported only when serving
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status,
                        headers=headers)


def _add_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError  # the optional [serve] extra: imported only when serving
    from starlette.exceptions import HTTPException  # the optional [serve] extra: imported only when serving

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        headers = {"Retry-After": "2"} if exc.status == 503 else None
        return _error(exc.status, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query")]
            field = ".".join(loc) or "body"
            if e.get("type") == "json_invalid":
                field = "body"
            errors.append({"field": field, "message": f"{field}: {e.get('msg', 'invalid')}"})
        first = errors[0] if errors else {"field": "body", "message": "invalid request"}
        return _error(422, first["message"], first["field"], errors=errors)

    @app.exception_handler(ValueError)
    async def refused(request, exc: ValueError):
        # The model checks its arguments too ("candidates: expected 1..N, got M"): a 422 then.
        msg = str(exc)
        head = msg.split(":", 1)[0]
        return _error(422, msg, head if head.isidentifier() else None)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if request.scope.get("mnisttext.too_large"):
            return _error(413, f"body: at most {MAX_BODY} bytes", "body")
        return _error(exc.status_code, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def crash(request, exc: Exception):
        # A bug must cost one request, not the server: answer 500 and keep serving.
        print(f"mnisttext serve: {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", None)


class _Guard:
    """ASGI middleware: refuse bodies over MAX_BODY as they arrive (chunked ones too: a huge
    upload must not take the memory), and add the security headers to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope.get("headers", ())).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            refusal = _error(413, f"body: at most {MAX_BODY} bytes", "body")
            return await refusal(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                scope["mnisttext.too_large"] = True    # FastAPI rewraps this as a 400: http_error
                raise ApiError(413, f"body: at most {MAX_BODY} bytes", "body")
            return message

        path = scope.get("path", "")
        extra = [(b"content-security-policy", CSP.encode()),
                 (b"x-content-type-options", b"nosniff")]
        if path == "/" or path.startswith("/static/"):
            extra.append((b"cache-control", b"no-cache"))      # a restarted server's new page

        async def headed(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in extra if k not in names]
            await send(message)

        await self.app(scope, counted, headed)


def _check_generate(body, cap: int) -> None:
    if body.candidates > cap:
        raise ApiError(422, f"candidates: at most {cap} on this server, got {body.candidates}",
                       "candidates")
    if body.keep > body.candidates:
        raise ApiError(422, f"keep: at most candidates ({body.candidates}), got {body.keep}",
                       "keep")


def _generate_kwargs(body) -> dict:
    return dict(digit=body.digit, candidates=body.candidates, keep=body.keep,
                temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                seed=body.seed)


def _complete_kwargs(body) -> tuple[dict, int]:
    label, levels, _ = image_of(body)
    return dict(line_or_levels=levels, label=label, rows=body.rows, samples=body.samples,
                temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
                seed=body.seed), label


def _add_model_routes(app, worker: ModelWorker, model) -> None:
    Generate, Image, Complete, _, _ = _schemas()
    from fastapi.responses import FileResponse  # the optional [serve] extra: imported only when serving

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info():
        return {"name": "mnisttext", "max_candidates": app.state.max_candidates,
                "max_samples": MAX_SAMPLES, "side": codec.SIDE, "line_length": codec.line_length(),
                "queue": worker.pending, "max_queue": worker.max_queue,
                "defaults": {"candidates": 64, "keep": 8, "temperature": 0.8, "rows": 15,
                             "samples": 6}}

    @app.get("/api/examples")
    async def examples(digit: int | None = None, limit: int = 50):
        if digit is not None and not 0 <= digit <= 9:
            raise ApiError(422, f"digit: must be in 0..9, got {digit}", "digit")
        if not 1 <= limit <= 1000:
            raise ApiError(422, f"limit: must be in 1..1000, got {limit}", "limit")
        lines = _examples(app)
        picked = [s for s in lines if digit is None or s[0] == str(digit)][:limit]
        return {"lines": picked, "total": len(lines)}

    @app.post("/api/generate")
    async def generate(body: Generate):
        _check_generate(body, app.state.max_candidates)
        t0 = time.perf_counter()
        fut, _ = worker.submit(model.generate, **_generate_kwargs(body))
        g = await fut
        return generation_json(g, time.perf_counter() - t0)

    @app.post("/api/complete")
    async def complete(body: Complete):
        kwargs, _ = _complete_kwargs(body)
        t0 = time.perf_counter()
        fut, _ = worker.submit(model.complete, **kwargs)
        return completion_json(await fut, body.rows, time.perf_counter() - t0)

    @app.post("/api/classify")
    async def classify(body: Image):
        label, levels, line = image_of(body)
        fut, _ = worker.submit(model.classify, line_or_levels=levels)
        p = await fut
        model_p = [float(x) for x in np.asarray(p["model"])]
        cnn_p = [float(x) for x in np.asarray(p["cnn"])]
        return {"model": model_p, "cnn": cnn_p, "model_digit": int(np.argmax(model_p)),
                "cnn_digit": int(np.argmax(cnn_p)), "line": line}


def _examples(app) -> list[str]:
    if app.state.examples is None:
        from .api import examples  # torch comes with it: only when a model is served
        app.state.examples = list(examples())
    return app.state.examples


def _add_codec_routes(app) -> None:
    _, _, _, Decode, Encode = _schemas()

    @app.post("/api/decode")
    async def decode(body: Decode):
        label, levels = parse_line(body.line)
        return {"label": label, "levels": levels.tolist(), "png": png_b64(levels)}

    @app.post("/api/encode")
    async def encode(body: Encode):
        if (body.levels is None) == (body.image is None):
            field = "levels" if body.levels is None else "image"
            raise ApiError(422, f"{field}: give exactly one of `levels` (30x30 0/1) or `image` "
                                "(28x28 0..255)", field)
        if body.levels is not None:
            levels = parse_grid(body.levels, "levels", codec.SIDE, 1)
            line = codec.encode_levels(levels[None], [body.label])[0]
        else:
            line = codec.encode(parse_grid(body.image, "image", 28, 255), body.label)
            levels = codec.decode(line)[1]
        return {"line": line, "label": body.label, "png": png_b64(levels)}


def _add_stream_routes(app, worker: ModelWorker, model) -> None:
    Generate, _, Complete, _, _ = _schemas()
    from fastapi import Request  # the optional [serve] extra: imported only when serving

    @app.post("/api/stream/generate")
    async def stream_generate(body: Generate, request: Request):
        _check_generate(body, app.state.max_candidates)
        start = {"kind": "generate", "candidates": body.candidates, "symbols": codec.n_symbols()}
        return _stream(request, worker, model.generate, _generate_kwargs(body), start,
                       generation_json)

    @app.post("/api/stream/complete")
    async def stream_complete(body: Complete, request: Request):
        kwargs, label = _complete_kwargs(body)
        start = {"kind": "complete", "candidates": body.samples, "symbols": codec.n_symbols(),
                 "rows": body.rows, "label": label}
        return _stream(request, worker, model.complete, kwargs, start,
                       lambda lines, s: completion_json(lines, body.rows, s))


def _stream(request, worker: ModelWorker, fn, kwargs: dict, start: dict, to_json):
    """Run fn(on_step=...) on the worker; stream `start`, then `rows` after every pixel row,
    then `result` (or `error`) as server-sent events. A client that goes away stops the model."""
    from fastapi.responses import StreamingResponse  # the optional [serve] extra: imported only when serving

    loop = asyncio.get_running_loop()
    steps: asyncio.Queue = asyncio.Queue()
    gone = threading.Event()

    def on_step(done: int, bodies: list[str]) -> None:
        if gone.is_set():
            raise _Cancelled()
        loop.call_soon_threadsafe(steps.put_nowait, (int(done), list(bodies)))

    t0 = time.perf_counter()
    fut, ahead = worker.submit(fn, on_step=on_step, **kwargs)    # a full queue: 503 here
    fut.add_done_callback(lambda _: steps.put_nowait(None))

    async def events():
        sent = 0
        try:
            yield _sse("start", {**start, "ahead": ahead})
            while (step := await steps.get()) is not None:
                done, bodies = step
                chunks = [b[sent:done] for b in bodies]
                yield _sse("rows", {"from": sent, "to": done, "chunks": chunks})
                sent = done
                if await request.is_disconnected():
                    return
            try:
                result = fut.result()
            except Exception as e:          # the model failed: tell the page, keep serving
                yield _sse("error", {"error": f"{type(e).__name__}: {e}", "field": None})
                return
            yield _sse("result", to_json(result, time.perf_counter() - t0))
        finally:
            gone.set()                      # stops the model at its next row if it still runs
            fut.cancel()                    # or drops it from the queue if it has not started

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---------------------------------------------------------------------------------------------
# command line

class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (not "None": those helps say what None means), and the examples
    epilog printed as written."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _folder_arg(text: str) -> str:
    if not text.strip():     # an empty path would quietly mean the shipped model
        raise argparse.ArgumentTypeError("an empty path")
    return text


def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `mnisttext serve` flags (the CLI makes the sub-parser and calls run(args)). The
    examples epilog and formatter are set only where the caller's parser has none."""
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = _Formatter
    if not parser.epilog:
        parser.epilog = EPILOG
    if not parser.description:
        parser.description = ("Serve the local web page and JSON API: generate digits live, "
                              "draw half a digit and see it completed.")
    parser.add_argument("--checkpoint", default=None, type=_folder_arg,
                        help="character model directory (default: the shipped checkpoints/gpt)")
    parser.add_argument("--classifier", default=None, type=_folder_arg,
                        help="reranker directory (default: the shipped checkpoints/classifier)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; keep 127.0.0.1 unless you mean to share it")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32", "int8"], default="auto",
                        help="sampling precision")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="model calls allowed to wait; more get 503 (busy)")
    parser.add_argument("--max-candidates", type=int, default=256,
                        help="the most candidates one generate request may ask for")
    return parser


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free one), so the URL printed is the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(args: argparse.Namespace) -> int:
    """Load the model, bind, print the URL and serve until Ctrl-C. Returns the exit status."""
    try:
        _fastapi()
        import uvicorn  # the optional [serve] extra: imported only when serving
    except ImportError:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535 or args.max_queue < 1 or args.max_candidates < 1:
        print("error: --port must be in 0..65535, --max-queue and --max-candidates "
              ">= 1", file=sys.stderr)
        return 2
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    from .api import load  # torch comes with it: only when a model is served
    t0 = time.perf_counter()
    try:
        model = load(args.checkpoint, args.classifier, args.device, args.dtype)
    except (OSError, ValueError, RuntimeError) as e:
        sock.close()
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    app = create_app(model, max_queue=args.max_queue, max_candidates=args.max_candidates)
    print(f"mnisttext serve: model loaded in {time.perf_counter() - t0:.1f} s; "
          f"open {url_of(sock)}  (Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
