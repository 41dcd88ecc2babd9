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
