"""Test helpers for the page in Chromium: the real service, and reading what the page shows.

Writing on the page and the handwriting it writes come from bench/page.py and
bench/handwriting.py, which the benchmarks use too.
"""
import json
import os
import tempfile
import time

from bench.page import FRONTEND_DIR
from conftest import wait_http
from service_helpers import ServiceProcess


# --- the real service --------------------------------------------------------------------

class Service(ServiceProcess):
    """``python -m service`` on 127.0.0.1 serving ``model_uri`` and the frontend; ``start()``
    returns once it is ready, and can be called again after ``stop()`` (same port)."""

    def __init__(self, model_uri, port=None, log_dir=None, env=None):
        super().__init__(log_dir or tempfile.mkdtemp(prefix="digitdraw-service-"), port=port, start=False,
                         MODEL_URI=model_uri, FRONTEND_DIR=FRONTEND_DIR, **(env or {}))

    def start(self, timeout=60, ready_path="/readyz"):
        """Start the service; return once ``ready_path`` answers 200 (use /healthz for a service without a model)."""
        super().start()
        try:
            wait_http(f"{self.url}{ready_path}", timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"the service did not become ready; its log:\n{self.read_log()[-4000:]}")
        return self

    def __enter__(self):
        return self.start()


# --- the feedback store and the page's own storage -------------------------------------

def feedback_records(store):
    """The records of a directory feedback store (FEEDBACK_URI), by id."""
    folder = os.path.join(store, "records")
    records = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            record = json.load(f)
        records[record["id"]] = record
    return records


def feedback_record(store, record_id, timeout=10):
    """The record ``record_id`` of a directory feedback store, waiting for it to be written."""
    path = os.path.join(store, "records", f"{record_id}.json")
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def is_feedback(response):
    """Whether a Playwright response answers a POST /feedback."""
    return response.url.endswith("/feedback") and response.request.method == "POST"


def stored_json(page, key, default=None):
    """The JSON value the page keeps in localStorage under ``key``."""
    text = page.evaluate("(key) => localStorage.getItem(key)", key)
    return default if text is None else json.loads(text)


def client_id(page):
    """The page's anonymous id for this browser."""
    return stored_json(page, "digitdraw.clientId")


def outbox(page):
    """The corrections the page keeps until the service takes them: [{key, record}]."""
    return stored_json(page, "digitdraw.feedback.outbox", [])



# --- reading the page --------------------------------------------------------------------

def probabilities(page):
    """The bars as {digit: p}, read from their data-digit and data-p attributes."""
    pairs = page.eval_on_selector_all(
        "[data-testid=probabilities] > *", "els => els.map(e => [Number(e.dataset.digit), Number(e.dataset.p)])")
    return {int(d): p for d, p in pairs}


def ink_fraction(page, testid):
    """Fraction of a canvas's pixels that are not the background (white or transparent black)."""
    return page.evaluate(
        """(testid) => {
            const c = document.querySelector(`[data-testid=${testid}]`);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let ink = 0;
            for (let i = 0; i < d.length; i += 4) {
                const white = d[i] > 250 && d[i + 1] > 250 && d[i + 2] > 250;
                const blank = d[i + 3] === 0 || (d[i] < 5 && d[i + 1] < 5 && d[i + 2] < 5);
                if (!white && !blank) ink++;
            }
            return ink / (c.width * c.height);
        }""", testid)


def pad_ink_fraction(page):
    """Fraction of the pad's pixels with ink (anything darker than the white paper)."""
    return page.evaluate(
        """() => {
            const c = document.querySelector('[data-testid=pad]');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let ink = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i] < 128) ink++;
            return ink / (c.width * c.height);
        }""")




# --- accessibility -----------------------------------------------------------------------

AXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node_modules", "axe-core", "axe.min.js")
BLOCKING = ("serious", "critical")  # the impacts an audit must not find


def axe_violations(page, impacts=BLOCKING):
    """axe-core's violations of ``impacts`` on the page as it is now: [{id, impact, help, targets}].

    axe-core is the npm package tests/package.json pins (make test installs it with npm ci);
    it is run through the browser's debugging protocol, which the page's Content-Security-
    Policy does not govern, so the page is audited exactly as it is served."""
    import pytest

    if not os.path.exists(AXE):
        pytest.skip(f"axe-core is not installed at {AXE}: run `npm ci` in tests/ (make test does)")
    if not page.evaluate("() => typeof window.axe === 'object'"):
        with open(AXE) as f:
            page.evaluate(f.read())
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"], "targets": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in impacts]
