"""Who may use the review page, and as whom they decide.

Two schemes, one interface (``identify(environ)`` -> Reviewer, or Denied):

- ``LinkAuth``, locally: the server prints a sign-in link holding a one-time token. Opening
  it once trades the token for a session cookie (HttpOnly, SameSite=Strict, expiring; Secure
  over HTTPS); the link then no longer works, and the server prints a fresh one for another
  browser. A session decides as the person who started the server (DIGITDRAW_ACTOR, else
  user@host), like the review CLI.
- ``IapAuth``, on GKE behind Identity-Aware Proxy: every request must carry IAP's signed
  header ``x-goog-iap-jwt-assertion``, verified here (ES256 with one of IAP's public keys,
  the expected audience, the issuer, not expired), and its email must be on the allowlist.
  A plain email header is never trusted: IAP strips client-sent ``x-goog-*`` headers, but a
  request that reaches the pod some other way could carry any.

State-changing requests also need the session's CSRF token in ``X-CSRF-Token`` and, when
the browser sends an Origin, the server's own (``check_write``). Tokens are compared in
constant time and only their hashes are kept.
"""
import dataclasses
import hashlib
import hmac
import json
import secrets
import threading
import time
import urllib.error
import urllib.request

IAP_KEYS_URL = "https://www.gstatic.com/iap/verify/public_key"  # {key id: PEM public key}
IAP_ISSUER = "https://cloud.google.com/iap"
IAP_HEADER = "HTTP_X_GOOG_IAP_JWT_ASSERTION"
IAP_CLOCK_SKEW = 30      # seconds of clock difference IAP's documentation allows
KEYS_TTL = 3600          # seconds IAP's public keys are kept before they are fetched again
KEYS_RETRY = 60          # an unknown key id refetches the keys at most this often
COOKIE = "digitdraw_review"
CSRF_HEADER = "HTTP_X_CSRF_TOKEN"


class Denied(Exception):
    """A request that may not go on: 401 (who are you?) or 403 (not you, or not like this)."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass(frozen=True)
class Reviewer:
    name: str          # who decides: recorded in every decision
    csrf: str          # the token state-changing requests must send
    expires: float | None = None  # when the session ends (epoch seconds); None: per request (IAP)


def _digest(token):
    return hashlib.sha256(token.encode()).hexdigest()


def cookie_value(environ, name=COOKIE):
    """The value of cookie ``name`` in the request, or None."""
    for part in environ.get("HTTP_COOKIE", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def check_write(environ, reviewer):
    """Refuse a state-changing request without the reviewer's CSRF token, or from another origin."""
    sent = environ.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent, reviewer.csrf):
        raise Denied(403, "csrf_failed", "missing or wrong X-CSRF-Token; reload the review page and try again")
    origin = environ.get("HTTP_ORIGIN")
    if origin and origin.split("://", 1)[-1] != environ.get("HTTP_HOST", ""):
        raise Denied(403, "csrf_failed", f"a request from {origin[:80]} may not change decisions here")


class LinkAuth:
    """One-time sign-in links and the sessions they start, in memory (a restart signs everyone out)."""

    scheme = "link"

    def __init__(self, actor, session_seconds, link_seconds, clock=time.time):
        self.actor, self.session_seconds, self.link_seconds, self.clock = actor, session_seconds, link_seconds, clock
        self._links, self._sessions = {}, {}  # token digest -> expiry; session digest -> Reviewer
        self._lock = threading.Lock()

    def new_link_token(self):
        """A fresh one-time token, valid for ``link_seconds``; put it in the printed link."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._links[_digest(token)] = self.clock() + self.link_seconds
        return token

    def sign_in(self, token):
        """Trade a link's token for a session: (session id for the cookie, Reviewer). The
        token is spent whether or not it was still valid."""
        now = self.clock()
        with self._lock:
            expiry = self._links.pop(_digest(token or ""), None)
            if expiry is None or expiry < now:
                raise Denied(401, "unauthorized", "this sign-in link is not valid: it was used already, it expired "
                                                  "or it is mistyped; use the newest link the review server printed")
            session = secrets.token_urlsafe(32)
            reviewer = Reviewer(self.actor, secrets.token_urlsafe(24), now + self.session_seconds)
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
            self._sessions[_digest(session)] = reviewer
        return session, reviewer

    def identify(self, environ):
        session = cookie_value(environ)
        if not session:
            raise Denied(401, "unauthorized", "not signed in: open the sign-in link the review server printed")
        with self._lock:
            reviewer = self._sessions.get(_digest(session))
        if reviewer is None or reviewer.expires < self.clock():
            raise Denied(401, "unauthorized", "the session is over or unknown: sign in again with the newest link "
                                              "the review server printed")
        return reviewer


class IapKeys:
    """IAP's public keys ({key id: PEM}) from ``url``, fetched when first needed, kept for
    KEYS_TTL seconds, and fetched again early (at most every KEYS_RETRY s) for an unknown key id."""

    def __init__(self, url, clock=time.monotonic):
        self.url, self.clock = url, clock
        self._keys, self._fetched = {}, None
        self._lock = threading.Lock()

    def get(self, key_id):
        with self._lock:
            now = self.clock()
            stale = self._fetched is None or now - self._fetched > KEYS_TTL
            unknown = key_id not in self._keys and (self._fetched is None or now - self._fetched > KEYS_RETRY)
            if stale or unknown:
                self._keys, self._fetched = self._fetch(), now
            return self._keys.get(key_id)

    def _fetch(self):
        try:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                keys = json.loads(response.read())
        except (OSError, ValueError) as e:
            raise Denied(401, "unauthorized", f"IAP's public keys could not be fetched from {self.url} ({e}); "
                                              "try again in a minute") from None
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise Denied(401, "unauthorized", f"{self.url} did not answer with IAP's keys ({{key id: PEM}})")
        return keys


class IapAuth:
    """Identity-Aware Proxy's signed header, verified, and an allowlist of reviewers' emails."""

    scheme = "iap"

    def __init__(self, audience, reviewers, keys_url=IAP_KEYS_URL, clock=time.monotonic):
        self.audience = audience
        self.reviewers = {r.strip().lower() for r in reviewers if r.strip()}
        self.keys = IapKeys(keys_url, clock)
        self._secret = secrets.token_bytes(32)  # CSRF tokens: an HMAC of the email

    def verify(self, assertion):
        """The claims of a valid IAP assertion; Denied(401) saying why it is not valid."""
        from google.auth import exceptions, jwt  # google-auth verifies ES256 with cryptography

        try:
            header = jwt.decode_header(assertion)
        except (ValueError, TypeError, exceptions.GoogleAuthError):
            raise Denied(401, "unauthorized", "the IAP assertion is not a JWT") from None
        if header.get("alg") != "ES256":
            raise Denied(401, "unauthorized", f"the IAP assertion is signed with {str(header.get('alg'))[:20]}, "
                                              "not ES256")
        key = self.keys.get(header.get("kid"))
        if key is None:
            raise Denied(401, "unauthorized", "the IAP assertion names a key that is not one of IAP's")
        try:
            claims = jwt.decode(assertion, certs=key, audience=self.audience, clock_skew_in_seconds=IAP_CLOCK_SKEW)
        except (ValueError, TypeError, exceptions.GoogleAuthError) as e:
            raise Denied(401, "unauthorized", f"the IAP assertion does not verify: {str(e)[:200]}") from None
        if claims.get("iss") != IAP_ISSUER:
            raise Denied(401, "unauthorized", f"the IAP assertion was not issued by {IAP_ISSUER}")
        if not isinstance(claims.get("email"), str) or not claims["email"]:
            raise Denied(401, "unauthorized", "the IAP assertion carries no email")
        return claims

    def identify(self, environ):
        assertion = environ.get(IAP_HEADER)
        if not assertion:
            raise Denied(401, "unauthorized", "no IAP assertion (x-goog-iap-jwt-assertion): reach the review page "
                                              "through its Identity-Aware Proxy address")
        if not self.audience:
            raise Denied(401, "unauthorized", "this review server has no IAP audience (REVIEW_IAP_AUDIENCE) to check "
                                              "assertions against; infra/deploy-review.sh --expose sets it")
        email = self.verify(assertion)["email"].lower()
        if email not in self.reviewers:
            raise Denied(403, "forbidden", f"{email} is not a reviewer; ask an operator to add it to REVIEWERS")
        csrf = hmac.new(self._secret, email.encode(), hashlib.sha256).hexdigest()
        return Reviewer(email, csrf)
