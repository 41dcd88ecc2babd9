"""Who may use the review page (training/review/auth.py), without a browser.

The one-time sign-in link and its sessions, with a clock the test moves; Identity-Aware
Proxy's signed header verified against keys generated here and served from 127.0.0.1:
valid, wrong audience, expired, not on the allowlist, another key, another algorithm,
another issuer; and the CSRF check on state-changing requests.
"""
import base64
import json

import pytest

from review_helpers import AUDIENCE, IapKeyServer, Key, assertion
from training.review.auth import COOKIE, Denied, IapAuth, LinkAuth, check_write


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def denied(call, *args):
    with pytest.raises(Denied) as e:
        call(*args)
    return e.value


def cookie(session):
    return {"HTTP_COOKIE": f"other=1; {COOKIE}={session}"}


def test_a_sign_in_link_works_once_and_its_session_expires():
    clock = Clock()
    auth = LinkAuth("reviewer@host", session_seconds=60, link_seconds=30, clock=clock)
    token = auth.new_link_token()
    session, reviewer = auth.sign_in(token)
    assert reviewer.name == "reviewer@host" and reviewer.expires == clock.now + 60
    assert auth.identify(cookie(session)) == reviewer
    again = denied(auth.sign_in, token)
    assert again.status == 401 and "used already" in again.message
    assert denied(auth.sign_in, "not-a-token").status == 401
    assert denied(auth.identify, {}).status == 401
    assert denied(auth.identify, cookie("forged")).status == 401
    clock.now += 61
    assert "session is over" in denied(auth.identify, cookie(session)).message


def test_a_link_expires_unused_and_each_link_starts_its_own_session():
    clock = Clock()
    auth = LinkAuth("r", session_seconds=60, link_seconds=30, clock=clock)
    late, first, second = auth.new_link_token(), auth.new_link_token(), auth.new_link_token()
    a, _ = auth.sign_in(first)
    b, _ = auth.sign_in(second)
    assert a != b and auth.identify(cookie(a)).csrf != auth.identify(cookie(b)).csrf
    clock.now += 31
    assert denied(auth.sign_in, late).status == 401


def test_writes_need_the_csrf_token_and_the_servers_own_origin():
    auth = LinkAuth("r", 60, 30)
    session, reviewer = auth.sign_in(auth.new_link_token())
    ok = {**cookie(session), "HTTP_X_CSRF_TOKEN": reviewer.csrf, "HTTP_HOST": "127.0.0.1:8090"}
    check_write(ok, reviewer)
    check_write({**ok, "HTTP_ORIGIN": "http://127.0.0.1:8090"}, reviewer)
    for bad in ({**ok, "HTTP_X_CSRF_TOKEN": ""}, {**ok, "HTTP_X_CSRF_TOKEN": reviewer.csrf[:-1] + "x"},
                {**ok, "HTTP_ORIGIN": "http://evil.example"}):
        assert denied(check_write, bad, reviewer).status == 403


@pytest.fixture
def keys():
    key = Key("key-1")
    server = IapKeyServer([key])
    yield key, server
    server.close()


def iap(header):
    return {"HTTP_X_GOOG_IAP_JWT_ASSERTION": header}


@pytest.mark.slow
def test_iap_assertions_are_verified_against_iaps_keys_and_the_allowlist(keys):
    key, server = keys
    auth = IapAuth(AUDIENCE, ["Alice@Example.com", " bob@example.com"], server.url)
    reviewer = auth.identify(iap(assertion(key)))
    assert reviewer.name == "alice@example.com" and reviewer.expires is None
    assert auth.identify(iap(assertion(key, "bob@example.com"))).csrf != reviewer.csrf

    def refused(header, status=401):
        e = denied(auth.identify, iap(header) if header is not None else {})
        assert e.status == status, (e.status, e.message)
        return e.message

    assert "no IAP assertion" in refused(None)
    assert "wrong audience" in refused(assertion(key, audience="/projects/1/global/backendServices/2"))
    assert "expired" in refused(assertion(key, issued=1_000_000, lifetime=600))
    assert "not a reviewer" in refused(assertion(key, "mallory@example.com"), 403)
    assert "was not issued by" in refused(assertion(key, issuer="https://accounts.google.com"))
    assert "does not verify" in refused(assertion(Key("key-1")))  # IAP's key id, another key
    assert "not one of IAP's" in refused(assertion(Key("key-2")))
    header, payload, _ = assertion(key).split(".")
    unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "key-1"}).encode()).decode().rstrip("=")
    assert "not ES256" in refused(f"{unsigned}.{payload}.")
    assert "not a JWT" in refused("x-goog-authenticated-user-email: alice@example.com")
    # A plain email header is no identity.
    assert denied(auth.identify, {"HTTP_X_GOOG_AUTHENTICATED_USER_EMAIL": "accounts.google.com:alice@example.com"})


@pytest.mark.slow
def test_iaps_keys_are_fetched_once_and_again_for_a_new_key(keys):
    key, server = keys
    clock = Clock()
    auth = IapAuth(AUDIENCE, ["alice@example.com"], server.url, clock=clock)
    for _ in range(3):
        auth.identify(iap(assertion(key)))
    assert server.fetches == 1
    rotated = Key("key-2")
    server.keys.append(rotated)
    assert "not one of IAP's" in denied(auth.identify, iap(assertion(rotated))).message, "fetched at most every 60 s"
    clock.now += 61
    assert auth.identify(iap(assertion(rotated))).name == "alice@example.com"
    assert server.fetches == 2
    clock.now += 3601  # and all of them again after an hour
    auth.identify(iap(assertion(key)))
    assert server.fetches == 3


@pytest.mark.slow
def test_without_an_audience_or_iaps_keys_every_request_is_refused(keys):
    key, server = keys
    assert "no IAP audience" in denied(IapAuth("", ["alice@example.com"], server.url).identify,
                                       iap(assertion(key))).message
    gone = IapAuth(AUDIENCE, ["alice@example.com"], "http://127.0.0.1:9/keys")
    assert "could not be fetched" in denied(gone.identify, iap(assertion(key))).message
