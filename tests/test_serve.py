"""The web server's API: JSON in and out, 4xx naming the field, streams, and 16 clients at once.

    .venv/bin/python -m pytest tests/test_serve.py -x -q      # prints the measured latencies

Most tests run on FakeModel, a stand-in that keeps mnisttext.api's contract (same signatures,
on_step after every pixel row, lock held by the caller) and answers from corpus lines in
microseconds, so that the server is tested and not the sampler. The last two tests run the
shipped checkpoint through mnisttext.api.load(), the 16 clients over real HTTP.
"""
import asyncio
import base64
import io
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest

from mnisttext import codec

pytest.importorskip("fastapi", reason="the web server's extra: pip install 'mnisttext[serve]'")
httpx = pytest.importorskip("httpx", reason="pip install httpx")
from fastapi.testclient import TestClient  # noqa: E402

from mnisttext import serve  # noqa: E402

from conftest import REFERENCE_LINES  # noqa: E402


class FakeModel:
    """mnisttext.api.Model's contract on canned lines: deterministic and fast."""

    max_candidates = 32

    def __init__(self, lines, row_delay: float = 0.0, fail: bool = False):
        self.lines = lines
        self.row_delay = row_delay          # seconds per pixel row, to make calls take time
        self.fail = fail
        self.lock = threading.Lock()
        self.calls = []
        self.cancelled = 0

    def _rows(self, bodies, start, on_step):
        # like the sampler: one on_step per pixel row (5 symbols), given part included
        try:
            for done in range(start + 5, codec.n_symbols() + 1, 5):
                time.sleep(self.row_delay)
                if on_step:
                    on_step(done, [b[:done] for b in bodies])
        except Exception:
            self.cancelled += 1
            raise

    def _pick(self, n, seed, digit=None):
        pool = [s for s in self.lines if digit is None or s[0] == str(digit)] or self.lines
        rng = np.random.default_rng(seed)
        return [pool[i][1:-1] for i in rng.integers(0, len(pool), n)]

    def generate(self, digit, candidates=64, keep=8, temperature=0.8, top_k=None, top_p=None,
                 seed=0, on_step=None):
        assert self.lock.locked(), "the server must hold model.lock around model calls"
        self.calls.append(("generate", dict(digit=digit, candidates=candidates, keep=keep,
                                            top_k=top_k, top_p=top_p, seed=seed)))
        if self.fail:
            raise RuntimeError("the model fell over")
        bodies = self._pick(candidates, seed, digit)
        self._rows(bodies, 0, on_step)
        lines = [f"{digit}{b})" for b in bodies]
        scores = np.random.default_rng(seed + 1).random(candidates)
        return SimpleNamespace(digit=digit, lines=lines, scores=scores,
                               kept=[int(i) for i in np.argsort(-scores)[:keep]])

    def complete(self, line_or_levels, rows=15, samples=6, temperature=0.8, top_k=None,
                 top_p=None, seed=0, label=0, on_step=None):
        assert self.lock.locked()
        levels = np.asarray(line_or_levels)
        assert levels.shape == (30, 30) and levels.dtype == np.uint8
        self.calls.append(("complete", dict(rows=rows, samples=samples, label=label)))
        given = codec.encode_levels(levels[None], [label])[0][1:1 + rows * 5]
        bodies = [given + b[len(given):] for b in self._pick(samples, seed)]
        self._rows(bodies, rows * 5, on_step)
        return [f"{label}{b})" for b in bodies]

    def classify(self, line_or_levels, label=0):
        assert self.lock.locked()
        ink = float(np.asarray(line_or_levels).mean())
        p = np.full(10, 0.05)
        p[int(ink * 1000) % 10] = 0.55
        return {"model": p, "cnn": p[::-1].copy()}


@pytest.fixture(scope="module")
def lines(test_lines):
    return test_lines[:200]


@pytest.fixture()
def fake(lines):
    return FakeModel(lines)


@pytest.fixture()
def client(fake, lines):
    return TestClient(serve.create_app(fake, examples=lines))


def png_size(b64: str) -> tuple[int, int]:
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(b64))).size


def events_of(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        head, data = block.split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def assert_error(r, status: int, field: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field, body
    assert isinstance(body["error"], str) and body["error"]
    return body


# ---------------------------------------------------------------------------------------------
# the page

def test_page_is_local_and_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and "<canvas id=\"pad\"" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # no CDN, no web font, no remote anything: every URL in the page is relative
    for f in serve.STATIC.iterdir():
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
    assert client.get("/api/docs").status_code == 404       # Swagger UI would load from a CDN


def test_info_and_examples(client, lines):
    info = client.get("/api/info").json()
    assert info["max_candidates"] == FakeModel.max_candidates and info["line_length"] == 152
    ex = client.get("/api/examples", params={"digit": 7, "limit": 5}).json()
    assert 0 < len(ex["lines"]) <= 5 and all(s[0] == "7" for s in ex["lines"])
    assert ex["total"] == len(lines)
    assert_error(client.get("/api/examples", params={"digit": 12}), 422, "digit")
    assert_error(client.get("/api/examples", params={"limit": 0}), 422, "limit")
    assert_error(client.get("/api/examples", params={"digit": "x"}), 422, "digit")


# ---------------------------------------------------------------------------------------------
# generate / complete / classify

def test_generate(client, fake):
    r = client.post("/api/generate", json={"digit": 4, "candidates": 12, "keep": 3, "seed": 5,
                                           "top_k": 10, "top_p": 0.9})
    assert r.status_code == 200, r.text
    g = r.json()
    assert g["digit"] == 4 and len(g["lines"]) == 12 and len(g["scores"]) == 12
    assert len(g["kept"]) == 3 and [b["index"] for b in g["best"]] == g["kept"]
    for b in g["best"]:
        assert b["line"] == g["lines"][b["index"]] and b["score"] == g["scores"][b["index"]]
        assert png_size(b["png"]) == (120, 120)
        codec.check_line(b["line"])
    assert fake.calls[-1][1] == dict(digit=4, candidates=12, keep=3, top_k=10, top_p=0.9, seed=5)


@pytest.mark.parametrize("body, field", [
    ({"digit": 10}, "digit"),
    ({"digit": -1}, "digit"),
    ({}, "digit"),
    ({"digit": "three"}, "digit"),
    ({"digit": 3, "candidates": 33}, "candidates"),          # FakeModel.max_candidates = 32
    ({"digit": 3, "candidates": 0}, "candidates"),
    ({"digit": 3, "candidates": 4, "keep": 5}, "keep"),
    ({"digit": 3, "temperature": -0.1}, "temperature"),
    ({"digit": 3, "temperature": 99}, "temperature"),
    ({"digit": 3, "top_p": 0}, "top_p"),
    ({"digit": 3, "top_p": 1.5}, "top_p"),
    ({"digit": 3, "top_k": 0}, "top_k"),
    ({"digit": 3, "seed": -1}, "seed"),
    ({"digit": 3, "candiates": 8}, "candiates"),             # a typo is an error, not ignored
])
def test_generate_bad_input(client, fake, body, field):
    for path in ("/api/generate", "/api/stream/generate"):
        assert_error(client.post(path, json=body), 422, field)
    assert not fake.calls, "a refused request must not reach the model"


def test_bad_bodies(client):
    as_json = {"content-type": "application/json"}
    assert_error(client.post("/api/generate", content=b"{not json", headers=as_json), 422, "body")
    assert_error(client.post("/api/generate", json=[1, 2]), 422, "body")
    r = client.post("/api/decode", content=b"x" * (serve.MAX_BODY + 1),
                    headers={"content-type": "application/json"})
    assert_error(r, 413, "body")
    chunked = iter([b'{"line": "'] + [b"x" * 65536] * 20 + [b'"}'])     # no content-length
    assert_error(client.post("/api/decode", content=chunked,
                             headers={"content-type": "application/json"}), 413, "body")
    r = client.post("/api/generate", content=b'{"digit": 3, "temperature": NaN}',
                    headers={"content-type": "application/json"})
    assert_error(r, 422, "temperature")
    assert client.get("/api/nowhere").status_code == 404
    assert client.get("/api/generate").status_code == 405


def test_complete(client, fake):
    line = REFERENCE_LINES[0]
    r = client.post("/api/complete", json={"line": line, "rows": 12, "samples": 3, "seed": 1})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["lines"]) == 3 and len(out["pngs"]) == 3 and out["rows"] == 12
    assert all(s[:1 + 60] == line[:1 + 60] for s in out["lines"])     # 12 rows = 60 symbols kept
    assert fake.calls[-1][1]["label"] == 5                               # the line's class digit
    levels = codec.decode(line)[1].tolist()
    out = client.post("/api/complete", json={"levels": levels, "label": 2, "rows": 0}).json()
    assert len(out["lines"]) == 6 and all(s[0] == "2" for s in out["lines"])


@pytest.mark.parametrize("body, field", [
    ({"line": REFERENCE_LINES[0][:-1]}, "line"),                       # too short
    ({"line": REFERENCE_LINES[0].replace(":", "~", 1)}, "line"),       # outside the alphabet
    ({"levels": [[0] * 30] * 29}, "levels"),                           # wrong size
    ({"levels": [[0] * 31] * 30}, "levels"),
    ({"levels": [[0] * 30] * 29 + [[0] * 29 + [2]]}, "levels"),        # not 0/1
    ({}, "line"),                                                      # neither
    ({"line": REFERENCE_LINES[0], "levels": [[0] * 30] * 30}, "levels"),   # both
    ({"line": REFERENCE_LINES[0], "rows": 30}, "rows"),
    ({"line": REFERENCE_LINES[0], "rows": -1}, "rows"),
    ({"line": REFERENCE_LINES[0], "samples": 0}, "samples"),
    ({"line": REFERENCE_LINES[0], "samples": serve.MAX_SAMPLES + 1}, "samples"),
    ({"line": REFERENCE_LINES[0], "label": 10}, "label"),
])
def test_complete_bad_input(client, fake, body, field):
    for path in ("/api/complete", "/api/stream/complete"):
        assert_error(client.post(path, json=body), 422, field)
    assert not fake.calls


def test_classify(client):
    p = client.post("/api/classify", json={"line": REFERENCE_LINES[1]}).json()
    assert len(p["model"]) == len(p["cnn"]) == 10
    assert abs(sum(p["model"]) - 1) < 1e-6 and p["model_digit"] == int(np.argmax(p["model"]))
    assert p["line"] == REFERENCE_LINES[1]
    levels = codec.decode(REFERENCE_LINES[1])[1].tolist()
    p = client.post("/api/classify", json={"levels": levels}).json()
    assert p["line"][1:] == REFERENCE_LINES[1][1:]
    assert_error(client.post("/api/classify", json={"levels": [[1] * 28] * 28}), 422, "levels")


# ---------------------------------------------------------------------------------------------
# decode / encode (no model)

def test_decode_encode_round_trip(client):
    for line in REFERENCE_LINES:
        d = client.post("/api/decode", json={"line": line}).json()
        assert d["label"] == int(line[0]) and png_size(d["png"]) == (120, 120)
        assert np.array_equal(np.asarray(d["levels"]), codec.decode(line)[1])
        e = client.post("/api/encode", json={"levels": d["levels"], "label": d["label"]}).json()
        assert e["line"] == line
    image = np.zeros((28, 28), dtype=int)
    image[5:20, 13:15] = 255
    e = client.post("/api/encode", json={"image": image.tolist(), "label": 1}).json()
    assert e["line"] == codec.encode(image.astype(np.uint8), 1)


@pytest.mark.parametrize("path, body, field", [
    ("/api/decode", {"line": "5abc"}, "line"),
    ("/api/decode", {"line": "x" + REFERENCE_LINES[0][1:]}, "line"),
    ("/api/decode", {"line": 5}, "line"),
    ("/api/decode", {}, "line"),
    ("/api/encode", {"levels": [[0] * 28] * 28}, "levels"),
    ("/api/encode", {"image": [[0] * 30] * 30}, "image"),
    ("/api/encode", {"image": [[300] * 28] * 28}, "image"),
    ("/api/encode", {"levels": [[0] * 30] * 30, "label": 11}, "label"),
    ("/api/encode", {"label": 3}, "levels"),
])
def test_codec_bad_input(client, path, body, field):
    body = assert_error(client.post(path, json=body), 422, field)
    assert body["error"].startswith(field)


def test_decode_message_says_where(client):
    bad = REFERENCE_LINES[0][:40] + "~" + REFERENCE_LINES[0][41:]
    body = assert_error(client.post("/api/decode", json={"line": bad}), 422, "line")
    assert "position 40" in body["error"]


# ---------------------------------------------------------------------------------------------
# streams

def test_stream_generate_rebuilds_the_lines(client):
    with client.stream("POST", "/api/stream/generate",
                       json={"digit": 6, "candidates": 5, "keep": 2}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = events_of(r.read().decode())
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "result" and kinds.count("rows") == 30
    assert events[0][1]["candidates"] == 5
    bodies = [""] * 5
    for kind, d in events:
        if kind == "rows":
            bodies = [b[:d["from"]] + c for b, c in zip(bodies, d["chunks"])]
            assert all(len(b) == d["to"] for b in bodies)
    result = events[-1][1]
    assert [s[1:-1] for s in result["lines"]] == bodies and len(result["best"]) == 2


def test_stream_complete_starts_with_the_given_rows(client):
    line = REFERENCE_LINES[2]
    with client.stream("POST", "/api/stream/complete",
                       json={"line": line, "rows": 20, "samples": 2}) as r:
        events = events_of(r.read().decode())
    rows = [d for k, d in events if k == "rows"]
    assert rows[0]["from"] == 0 and rows[0]["to"] == 105 and len(rows) == 10
    assert all(c[:100] == line[1:101] for c in rows[0]["chunks"])
    assert events[-1][0] == "result" and len(events[-1][1]["lines"]) == 2


def test_model_failure_is_one_failed_request(lines):
    fake = FakeModel(lines, fail=True)
    client = TestClient(serve.create_app(fake, examples=lines), raise_server_exceptions=False)
    r = client.post("/api/generate", json={"digit": 1, "candidates": 2, "keep": 1})
    assert r.status_code == 500 and "fell over" in r.json()["error"]
    small = {"digit": 1, "candidates": 2, "keep": 1}
    with client.stream("POST", "/api/stream/generate", json=small) as r:
        events = events_of(r.read().decode())
    assert events[-1][0] == "error" and "fell over" in events[-1][1]["error"]
    fake.fail = False                                   # and the server still serves
    assert client.post("/api/generate", json=small).status_code == 200


def test_model_value_error_is_a_422(lines):
    class Picky(FakeModel):
        def classify(self, line_or_levels, label=0):
            raise ValueError("temperature: expected a finite number >= 0, got nan")
    client = TestClient(serve.create_app(Picky(lines), examples=lines))
    r = client.post("/api/classify", json={"line": REFERENCE_LINES[0]})
    assert_error(r, 422, "temperature")


def test_full_queue_answers_503(lines):
    async def scenario():
        release = threading.Event()
        worker = serve.ModelWorker(FakeModel(lines), max_queue=2)
        first, _ = worker.submit(release.wait)
        second, ahead = worker.submit(lambda: "second")
        assert ahead == 1
        with pytest.raises(serve.ApiError) as e:
            worker.submit(lambda: "third")
        assert e.value.status == 503
        release.set()
        assert await second == "second" and worker.pending == 0
        worker.shutdown()
    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# over real HTTP

@contextmanager
def serving(app):
    """uvicorn on a free port of 127.0.0.1 in a thread -> the base URL."""
    import uvicorn
    sock = serve.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield serve.url_of(sock).rstrip("/")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_a_client_that_leaves_stops_the_model(lines):
    fake = FakeModel(lines, row_delay=0.05)            # 30 rows: 1.5 s if nobody stops it
    with serving(serve.create_app(fake, examples=lines)) as url, httpx.Client(timeout=10) as c:
        with c.stream("POST", f"{url}/api/stream/generate",
                      json={"digit": 2, "candidates": 3, "keep": 1}) as r:
            for line in r.iter_lines():
                if line.startswith("event: rows"):
                    break                               # leave after the first row
        deadline = time.monotonic() + 5
        while fake.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.cancelled == 1, "the generation ran on after its client left"
        r = c.post(f"{url}/api/generate", json={"digit": 2, "candidates": 2, "keep": 1})
        assert r.status_code == 200


@pytest.fixture(scope="module")
def real_model():
    from mnisttext.api import load
    return load()


def p95(xs):
    return float(np.percentile(xs, 95))


def test_one_generate_request_latency(real_model, capsys):
    """One default request (64 candidates, keep 8) end to end; printed, not asserted."""
    client = TestClient(serve.create_app(real_model))
    client.post("/api/generate", json={"digit": 0, "candidates": 4, "keep": 1})   # warm up
    times = []
    for digit in (3, 7):
        t0 = time.perf_counter()
        r = client.post("/api/generate", json={"digit": digit})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200 and len(r.json()["best"]) == 8
    with capsys.disabled():                 # shown without -s, in `make test` too
        print(f"\n[serve] one generate request (64 candidates, keep 8): "
              f"{[round(t, 2) for t in times]} s")


def _client_session(url: str, i: int, line: str) -> list[tuple[str, float]]:
    """What one user of the page does: a streamed generation, a completion, classify, decode
    (small requests: the model serves the 16 clients one call at a time)."""
    out = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for name, call in [
            ("stream/generate", lambda: c.post("/api/stream/generate", json={
                "digit": i % 10, "candidates": 8, "keep": 2, "seed": i})),
            ("complete", lambda: c.post("/api/complete", json={
                "line": line, "rows": 25, "samples": 2, "seed": i})),
            ("classify", lambda: c.post("/api/classify", json={"line": line})),
            ("decode", lambda: c.post("/api/decode", json={"line": line})),
        ]:
            t0 = time.perf_counter()
            r = call()
            assert r.status_code == 200, (name, r.status_code, r.text[:200])
            if name.startswith("stream"):
                assert r.text.count("event: rows") == 30 and "event: error" not in r.text
                assert "event: result" in r.text
            out.append((name, time.perf_counter() - t0))
    return out


def test_sixteen_clients_at_once(real_model, capsys):
    """16 concurrent clients on 127.0.0.1, 4 requests each: all complete, none errors; the p95
    latency is printed (the model serves them one at a time, so it is ~16x a single call)."""
    from mnisttext.api import examples as shipped
    examples = shipped()
    app = serve.create_app(real_model, examples=examples)
    with serving(app) as url, ThreadPoolExecutor(16) as pool:
        t0 = time.perf_counter()
        sessions = list(pool.map(lambda i: _client_session(url, i, examples[i]), range(16)))
        wall = time.perf_counter() - t0
    times = [t for s in sessions for _, t in s]
    assert len(times) == 64
    by = {name: [t for s in sessions for n, t in s if n == name] for name, _ in sessions[0]}
    with capsys.disabled():
        print(f"\n[serve] 16 clients x 4 requests in {wall:.1f} s: p95 latency {p95(times):.2f} s, "
              f"median {statistics.median(times):.2f} s; p95 by endpoint: "
              + ", ".join(f"{k} {p95(v):.2f} s" for k, v in by.items()))


# ---------------------------------------------------------------------------------------------
# the command line

def test_cli_flags_and_examples():
    import argparse
    parser = serve.add_args(argparse.ArgumentParser(prog="mnisttext serve"))
    text = parser.format_help()
    for flag in ("--checkpoint", "--classifier", "--host", "--port", "--device", "--dtype",
                 "--max-queue", "--max-candidates"):
        assert flag in text
    assert text.rstrip().splitlines()[-1].strip().startswith("mnisttext serve")   # examples last
    args = parser.parse_args([])
    assert (args.host, args.port) == ("127.0.0.1", 8000)


def test_run_refuses_a_busy_port(capsys):
    import argparse
    taken = serve.bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        args = serve.add_args(argparse.ArgumentParser()).parse_args(["--port", str(port)])
        assert serve.run(args) == 2                    # before loading any model
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        taken.close()
