"""Helpers for the review page's tests: Identity-Aware Proxy's side, played locally.

``IapKeyServer`` serves IAP's public-key document ({key id: PEM}) from 127.0.0.1, for keys
generated in the test (EC P-256, as IAP's); ``assertion`` signs an IAP-style JWT (ES256)
with one of them. Nothing leaves the machine.
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth import crypt, jwt

ISSUER = "https://cloud.google.com/iap"
AUDIENCE = "/projects/123456789012/global/backendServices/4242424242424242"


class Key:
    """An EC P-256 key pair named ``kid``: ``public_pem`` for the key document, ``sign`` for JWTs."""

    def __init__(self, kid):
        self.kid = kid
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_pem = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        pem = self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        self.signer = crypt.ES256Signer.from_string(pem, kid)


def assertion(key, email="alice@example.com", audience=AUDIENCE, issued=None, lifetime=600, issuer=ISSUER, **extra):
    """An IAP assertion for ``email``, signed ES256 by ``key`` (its kid in the header)."""
    now = int(time.time()) if issued is None else issued
    claims = {"iss": issuer, "aud": audience, "iat": now, "exp": now + lifetime, "sub": f"accounts.google.com:{email}",
              "email": email, "hd": email.split("@")[-1], **extra}
    return jwt.encode(key.signer, claims).decode()


class IapKeyServer:
    """IAP's key document on 127.0.0.1: ``url``; ``keys`` (Key objects) can change while it runs;
    ``fetches`` counts the requests."""

    def __init__(self, keys):
        self.keys, self.fetches = list(keys), 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps({k.kid: k.public_pem for k in outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/iap/verify/public_key"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- corrections, stored by the service's own POST /feedback -------------------------------

def scribble(rng, kind):
    """A PNG canvas (280x280, black ink on transparent) of a drawing no other call draws:
    ``kind`` "one" is an upright stroke with a flag at its top, leaning a random amount;
    anything else a random three-segment scribble."""
    from PIL import Image, ImageDraw

    from service_helpers import png_bytes

    im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    if kind == "one":
        top = (140 + rng.uniform(-25, 25), 45 + rng.uniform(-5, 5))
        d.line([(top[0] - rng.uniform(15, 35), top[1] + rng.uniform(15, 35)), top,
                (140 + rng.uniform(-25, 25), 235 + rng.uniform(-5, 5))], fill=(0, 0, 0, 255),
               width=int(rng.integers(14, 22)), joint="curve")
    else:
        d.line([tuple(rng.uniform(40, 240, 2)) for _ in range(4)], fill=(0, 0, 0, 255),
               width=int(rng.integers(12, 24)), joint="curve")
    return png_bytes(im)


def send_corrections(feedback_uri, corrections, seed=0):
    """Store ``corrections`` in ``feedback_uri`` through the service's own POST /feedback (its
    Flask app in this process): dicts of client_id, label, predicted and kind (scribble's),
    and optionally address, the client's IP address. Returns the stored records' ids, in order."""
    import numpy as np

    from service.app import create_app
    from service_helpers import data_url

    rng = np.random.default_rng(seed)
    app = create_app({"FEEDBACK_URI": feedback_uri, "FEEDBACK_RATE_LIMIT": 0, "START_LOADER": False,
                      "LOG_LEVEL": "WARNING"})
    client, ids = app.test_client(), []
    for c in corrections:
        for _ in range(5):  # a drawing preprocessed into one already stored: draw another
            body = {"image": data_url(scribble(rng, c.get("kind"))), "label": c["label"],
                    "predicted": c.get("predicted"), "client_id": c.get("client_id")}
            r = client.post("/feedback", json=body, environ_base={"REMOTE_ADDR": c.get("address", "203.0.113.7")})
            assert r.status_code in (200, 201), r.get_data(as_text=True)
            if r.status_code == 201:
                ids.append(r.get_json()["id"])
                break
        else:
            raise AssertionError("five drawings in a row were duplicates")
    return ids


# --- the review server, as `python -m training.review` ----------------------------------

class ReviewServer:
    """``python -m training.review`` (the container's command) on 127.0.0.1 over ``store``,
    with ``args`` added; its output in a file. ``link()`` is the newest sign-in link it printed."""

    def __init__(self, store, log_dir, *args, env=None):
        import os
        import subprocess
        import sys

        from conftest import ROOT, free_port, wait_http

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(log_dir, f"review-{self.port}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.review", "--store", store, "--port", str(self.port), *args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_http(f"{self.url}/healthz", timeout=60, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"the review server did not start; its log:\n{self.read_log()[-3000:]}")

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def links(self):
        import re

        return re.findall(rf"{re.escape(self.url)}/login\?token=[A-Za-z0-9_-]+", self.read_log())

    def link(self, after=None, timeout=10):
        """The newest sign-in link; with ``after``, wait for one newer than that."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            links = self.links()
            if links and links[-1] != after:
                return links[-1]
            time.sleep(0.05)
        raise TimeoutError(f"no new sign-in link in the log:\n{self.read_log()[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
