"""The page, end to end in headless Chromium: generate, draw and complete, decode.

    .venv/bin/python -m pytest tests/test_browser.py -x -q
    MNISTTEXT_SCREENSHOT=1 .venv/bin/python -m pytest tests/test_browser.py -q -k screenshot
                                                   # also rewrites sample_img/web.png

Needs Debian's `chromium` (/usr/bin/chromium, which `.ci/run` installs; MNISTTEXT_CHROMIUM names
another binary) and Playwright's Python package. Without them these tests skip and say which is
missing, unless MNISTTEXT_REQUIRE_BROWSER=1 (set by CI): then a missing browser is a failure.
The server is uvicorn in a thread on a free port of 127.0.0.1 with the shipped checkpoint.
"""
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import REFERENCE_LINES, ROOT

CHROMIUM = Path(os.environ.get("MNISTTEXT_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = ROOT / "sample_img" / "web.png"
TIMEOUT_MS = 60_000           # a generate takes ~1-4 s here; the slack is for a loaded machine


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian: apt-get install chromium)"
    for module, hint in [("playwright", "pip install playwright"),
                         ("fastapi", "pip install 'mnisttext[serve]'"),
                         ("uvicorn", "pip install 'mnisttext[serve]'")]:
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed ({hint})"
    return None


_reason = _missing()
if _reason and os.environ.get("MNISTTEXT_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"MNISTTEXT_REQUIRE_BROWSER=1 but {_reason}")
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"browser tests: {_reason}")


@pytest.fixture(scope="module")
def server():
    """The app on the shipped model, served by uvicorn on a free port -> base URL."""
    import uvicorn

    from mnisttext import serve
    from mnisttext.api import load
    app = serve.create_app(load())
    sock = serve.bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield serve.url_of(sock)
    srv.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page on the app that fails the test on a script error or a request elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors, foreign = [], []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text)
          if "Content Security Policy" in m.text else None)
    pg.on("request", lambda r: foreign.append(r.url)
          if not (r.url.startswith(server) or r.url.startswith("data:")) else None)
    pg.goto(server)
    pg.wait_for_selector("#server.ok")
    yield pg
    context.close()
    assert not errors, f"script errors or CSP violations on the page: {errors}"
    assert not foreign, f"the page asked for something off this server: {foreign}"


def watch_status(pg, element_id: str) -> None:
    """Record every text the status line shows, to see the rows stream in."""
    pg.evaluate("""(id) => {
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(document.getElementById(id).textContent))
            .observe(document.getElementById(id),
                     {childList: true, characterData: true, subtree: true});
    }""", element_id)


def draw(pg, strokes) -> None:
    """Mouse strokes on the pad, in pixel coordinates (col, row) of the 30x30 grid."""
    box = pg.locator("#pad").bounding_box()

    def at(col, row):
        return (box["x"] + (col + 0.5) * box["width"] / 30,
                box["y"] + (row + 0.5) * box["height"] / 30)

    for stroke in strokes:
        pg.mouse.move(*at(*stroke[0]))
        pg.mouse.down()
        for point in stroke[1:]:
            pg.mouse.move(*at(*point), steps=8)
        pg.mouse.up()


def ink(pg) -> int:
    return pg.evaluate("() => pad.bits.reduce((a, b) => a + b, 0)")


# ---------------------------------------------------------------------------------------------

def test_generate_streams_then_ranks(page):
    page.fill("#g-candidates", "8")
    page.fill("#g-keep", "3")
    page.click("#g-digits button:text-is('5')")        # picking a digit starts a generation
    watch_status(page, "g-status")
    page.wait_for_selector("#generate[data-state=done]")
    rows_seen = [s for s in page.evaluate("window.__seen") if "row" in s]
    assert len(rows_seen) >= 5, f"rows did not stream in: {rows_seen}"
    assert page.locator("#g-grid .tile").count() == 8
    assert page.locator("#g-grid .tile.kept").count() == 3
    best = page.locator("#g-best li")
    assert best.count() == 3
    for i in range(3):
        assert best.nth(i).locator("code").inner_text().startswith("5")
        assert best.nth(i).locator("img").get_attribute("src").startswith("data:image/png;base64,")
    # a candidate's line can be looked at and sent to the pad
    page.locator("#g-grid .tile").nth(0).click()
    assert len(page.inner_text("#g-sel-line")) == 152


def test_draw_half_a_digit_and_complete(page):
    assert ink(page) == 0
    draw(page, [[(8, 6), (21, 6), (18, 11), (16, 14)]])          # the top of a 7
    assert ink(page) > 20
    page.wait_for_selector("#draw[data-view=ready]")
    line = page.inner_text("#d-line")
    assert len(line) == 152 and set(line[1:-1]) != {":"}
    bars = page.locator("#probs .fill.model")
    assert bars.count() == 10
    page.fill("#c-samples", "3")
    watch_status(page, "c-status")
    page.click("#c-run")
    page.wait_for_selector("#draw[data-state=done]")
    assert page.locator("#c-grid .tile").count() == 3
    lines = page.locator("#c-lines code").all_text_contents()   # in a closed <details>
    drawn = page.inner_text("#d-line")
    assert len(lines) == 3 and all(s[1:76] == drawn[1:76] for s in lines)   # 15 rows kept
    assert any("row" in s for s in page.evaluate("window.__seen"))


def test_touch_draws_too(page):
    box = page.locator("#pad").bounding_box()
    cdp = page.context.new_cdp_session(page)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for k in range(1, 9):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove",
                                              "touchPoints": [{"x": x, "y": y + k * 20}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert ink(page) > 10


def test_load_a_test_digit_and_see_the_models_view(page):
    page.select_option("#d-example-digit", "4")
    page.click("#d-load")
    page.wait_for_selector("#draw[data-view=ready]")
    assert "(a 4)" in page.inner_text("#d-example-info")
    top = page.locator("#probs .prob-row.top .digit").all_inner_texts()
    assert "4" in top, f"a test 4 should be the model's or the CNN's top class, got {top}"
    assert page.inner_text("#d-line").startswith("4")


def test_paste_a_line_and_see_its_image(page):
    page.fill("#x-line", REFERENCE_LINES[1])
    page.click("#x-run")
    page.wait_for_selector("#decode[data-state=done]")
    assert page.locator("#x-img").is_visible()
    assert page.get_attribute("#x-img", "src").startswith("data:image/png;base64,")
    assert page.inner_text("#x-label") == "a 0"
    page.fill("#x-line", REFERENCE_LINES[1][:-3])                # malformed: says why
    page.click("#x-run")
    page.wait_for_selector("#decode[data-state=error]")
    assert "wrong length" in page.inner_text("#x-status")
    assert not page.locator("#x-img").is_visible()


def test_bad_settings_are_named(page):
    page.fill("#g-candidates", "100000")
    page.click("#g-run")
    page.wait_for_selector("#generate[data-state=error]")
    assert page.inner_text("#g-status").startswith("candidates")
    assert "invalid" in page.get_attribute("#g-candidates", "class")


@pytest.mark.skipif(os.environ.get("MNISTTEXT_SCREENSHOT") != "1",
                    reason="writes sample_img/web.png only with MNISTTEXT_SCREENSHOT=1")
def test_screenshot(page):
    """The README's picture: a generation, a completion of a test digit, a decoded line."""
    page.click("#g-digits button:text-is('3')")
    page.wait_for_selector("#generate[data-state=done]")
    page.select_option("#d-example-digit", "2")
    page.click("#d-load")
    page.wait_for_selector("#draw[data-view=ready]")
    page.click("#c-run")
    page.wait_for_selector("#draw[data-state=done]")
    page.fill("#x-line", REFERENCE_LINES[0])
    page.click("#x-run")
    page.wait_for_selector("#decode[data-state=done]")
    page.evaluate("window.scrollTo(0, 0)")
    page.mouse.move(0, 0)                               # no hover highlight in the picture
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
