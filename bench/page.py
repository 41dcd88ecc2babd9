"""Driving the DigitDraw page in a real Chromium: Debian's, through Playwright.

- ``launch_browser``: /usr/bin/chromium with the flags this machine's closed network needs
  (never ``playwright install``);
- ``draw_mouse`` / ``draw_touch``: replay strokes (lists of (x, y) in pad fractions) on the pad;
- ``wait_for_answer``: the page's answer once no request is in flight;
- ``correct``: tell the page the digit it read is wrong and which it is ("Wrong?", then the digit);
- ``replay_handwriting``: write digits on the page stroke by stroke and record what it reads;
- ``render_canvases``: drawings rendered and encoded by the page's own pad.js and png.js,
  exactly as the page sends them.
"""
import os

import numpy as np

from bench.handwriting import VARIANTS, mnist_to_strokes, place, traced_drawings

from bench import ROOT

FRONTEND_DIR = os.path.join(ROOT, "frontend")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def require_chromium():
    """Exit with one line if Chromium is missing: call it before starting worker processes,
    where an exit would leave their pool waiting for a result."""
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"error: no Chromium at {CHROMIUM}; install Debian's (apt-get install chromium, or make "
                         "browser)")


def launch_browser(playwright):
    require_chromium()
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_for_answer(page, timeout=15000):
    """Wait until no request is in flight and the page shows an answer or an error; return the digit text."""
    page.wait_for_function(
        """() => {
            const busy = document.querySelector('.result').getAttribute('aria-busy') === 'true';
            const digit = document.querySelector('[data-testid=prediction]').textContent;
            const error = document.querySelector('[data-testid=error]').textContent;
            return !busy && (digit !== '' || error !== '');
        }""", timeout=timeout)
    return page.get_by_test_id("prediction").text_content()


def correct(page, digit):
    """Click "Wrong?" under the answer and then ``digit``, which sends the correction at once."""
    page.get_by_test_id("wrong").click()
    page.get_by_test_id(f"correct-{digit}").click()


def _to_page(box, x, y):
    return box["x"] + x * box["width"], box["y"] + y * box["height"]


def draw_mouse(page, strokes):
    """Draw strokes (lists of (x, y) in pad fractions) with mouse events on the pad."""
    box = page.get_by_test_id("pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(*_to_page(box, *stroke[0]))
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(*_to_page(box, x, y))
        page.mouse.up()


def draw_touch(page, cdp, strokes):
    """Draw strokes with touch events (CDP Input.dispatchTouchEvent: page.touchscreen only taps)."""
    box = page.get_by_test_id("pad").bounding_box()
    for stroke in strokes:
        x, y = _to_page(box, *stroke[0])
        cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for sx, sy in stroke[1:]:
            x, y = _to_page(box, sx, sy)
            cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        # Come to rest before lifting, as a finger does: lifted mid-swipe, Chromium starts a
        # fling, and a tap made while a fling runs only stops it (no click).
        page.wait_for_timeout(50)
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def replay_handwriting(browser, url, images, labels, ids=None, variants=VARIANTS, every_variant=False,
                       seed=0, progress=None, keep_failures=False):
    """Write each image on the page at ``url`` stroke by stroke with the mouse, press Predict,
    and record what the page reads. Each digit is written in one variant (chosen by its id,
    round robin), or in all of them with ``every_variant``; its size and position get a
    little jitter seeded by (seed, id), so a digit is written the same way however the
    digits are split between workers. ``ids`` default to 0..n-1.

    Returns one dict per writing: id, label, read ('' when the page showed an error
    instead), variant; with ``keep_failures`` also the pad and preview as PNG data URLs for
    the wrong ones. ``progress(done, total)`` is called every 50 writings.
    """
    ids = list(range(len(images))) if ids is None else [int(i) for i in ids]
    strokes = [mnist_to_strokes(image) for image in images]
    plan = [(k, v) for k, id_ in enumerate(ids)
            for v in (range(len(variants)) if every_variant else [id_ % len(variants)])]
    records = []
    for v, variant in enumerate(variants):
        context = browser.new_context(viewport={"width": 900, "height": 700})
        page = context.new_page()
        page.goto(f"{url}/?stroke={variant['stroke']}")
        page.get_by_test_id("pad").wait_for()
        for k in [k for k, pv in plan if pv == v]:
            record = {"id": ids[k], "label": int(labels[k]), "variant": variant["name"]}
            if strokes[k]:
                rng = np.random.default_rng([seed, ids[k], v])
                scale, shift = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05, size=2)
                center = (variant["center"][0] + shift[0], variant["center"][1] + shift[1])
                page.keyboard.press("Escape")
                draw_mouse(page, place(strokes[k], variant["size"] * scale, center))
                page.get_by_test_id("predict").click()
                record["read"] = wait_for_answer(page)
            else:
                record["read"] = ""
            if keep_failures and record["read"] != str(record["label"]):
                record.update(page.evaluate("""() => ({
                    pad: document.querySelector('[data-testid=pad]').toDataURL(),
                    preview: document.querySelector('[data-testid=preview]').toDataURL()})"""))
            records.append(record)
            if progress and len(records) % 50 == 0:
                progress(len(records), len(plan))
        context.close()
    return records


def accuracy(records):
    return sum(r["read"] == str(r["label"]) for r in records) / max(1, len(records))


def render_canvases(drawings, rgba=False):
    """PNGs of ``drawings`` (dicts of ``strokes`` in pad fractions and pen ``width``, a
    fraction of the pad) exactly as the page sends them: rendered by frontend/pad.js in
    Chromium at its export size and encoded by frontend/png.js (8-bit grey); with ``rgba``
    by the canvas's own toDataURL instead, as a browser without CompressionStream sends them."""
    import base64

    from playwright.sync_api import sync_playwright

    origin = "http://frontend.invalid"  # a blank page, and the scripts from the frontend directory

    def serve(route):
        name = route.request.url.removeprefix(f"{origin}/")
        if name in ("pad.js", "png.js"):
            route.fulfill(path=os.path.join(FRONTEND_DIR, name), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html>", content_type="text/html")

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = browser.new_page()
            page.route(f"{origin}/**", serve)
            page.goto(f"{origin}/")
            urls = page.evaluate("""async ([drawings, rgba]) => {
                const { Pad } = await import('/pad.js');
                return Promise.all(drawings.map(({ strokes, width }) => {
                    const pad = new Pad(document.createElement('canvas'), { widthFraction: width });
                    pad.strokes = strokes;
                    return rgba ? pad.exportCanvas().toDataURL('image/png') : pad.toDataURL();
                }));
            }""", [drawings, rgba])
        finally:
            browser.close()
    return [base64.b64decode(url.split(",", 1)[1]) for url in urls]


def handwriting_canvases(images, rgba=False):
    """``images`` (MNIST digits) traced into strokes and written in the evaluation's
    VARIANTS, round robin, as ``render_canvases`` PNGs."""
    return render_canvases(traced_drawings(images), rgba)
