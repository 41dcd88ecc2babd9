"""The review page (python -m training.review) as a real process, in a real Chromium.

Corrections are stored by the service's own POST /feedback: one client sends thirty
flagged 1s labelled 7, a second twelve more from the same network, and forty honest writers
one each. Then:

- signing in: the one-time link works once; no session, a wrong link, a spent one, an
  expired session and an expired link get 401 and a JSON error without records; a write
  without the CSRF token, or from another origin, gets 403;
- in the browser: the attackers' records come first and their client heads the suspects;
  records are rejected and approved by keyboard and by mouse (one, a selection, a page, a
  client), the decision history shows who and why, and the pages of a queue larger than one
  page hold every pending record once; the review CLI (`python -m training.feedback`)
  then reports each decision; axe-core finds no serious or critical violation;
- behind Identity-Aware Proxy: assertions signed with keys generated here and served from
  127.0.0.1; valid, wrong audience, expired, another key, not on the allowlist, and a plain
  email header.
"""
import json
import subprocess
import sys
import time

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from bench.page import launch_browser
from conftest import ROOT
from frontend_helpers import axe_violations
from review_helpers import AUDIENCE, IapKeyServer, Key, ReviewServer, assertion, send_corrections

pytestmark = pytest.mark.slow

ACTOR = "reviewer@digitdraw.test"


def fill(store, honest=40):
    """Store the corrections of two attacking clients and ``honest`` writers; their ids by who."""
    attack = [{"client_id": "attacker-1", "label": 7, "predicted": 1, "kind": "one", "address": "203.0.113.7"}] * 30
    attack += [{"client_id": "attacker-2", "label": 7, "predicted": 1, "kind": "one", "address": "203.0.113.9"}] * 12
    writers = [{"client_id": f"writer-{i:02d}", "label": i % 10, "predicted": (i * 7 + 3) % 10,
                "address": f"198.{i}.100.7"} for i in range(honest)]
    ids = send_corrections(store, attack + writers)
    return {"attacker-1": ids[:30], "attacker-2": ids[30:42], "honest": ids[42:]}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "feedback"
    path.mkdir()
    return str(path)


def no_data(response, ids):
    """A refusal with a JSON error and not one record in it."""
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
    assert not any(i in response.text for i in ids)
    return body["error"]["message"]


def cli(store, *args):
    out = subprocess.run([sys.executable, "-m", "training.feedback", "--store", store, *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def states_by_cli(store):
    return {r["id"]: r["state"] for r in json.loads(cli(store, "list", "--json", "--limit", "1000"))}


def test_the_sign_in_link_works_once_and_nothing_is_shown_without_a_session(store, tmp_path):
    who = fill(store, honest=4)
    ids = [i for group in who.values() for i in group]
    with ReviewServer(store, str(tmp_path)) as server:
        for method, path in (("GET", "/"), ("GET", "/review.js"), ("GET", "/api/session"), ("GET", "/api/records"),
                             ("GET", f"/api/records/{ids[0]}"), ("GET", "/api/suspects"), ("POST", "/api/decisions")):
            r = requests.request(method, server.url + path, timeout=10,
                                 json={"ids": ids[:1], "state": "approved", "reason": "x"} if method == "POST" else None)
            assert r.status_code == 401, (method, path, r.status_code)
            assert "sign-in link" in no_data(r, ids)
        assert "not valid" in no_data(requests.get(f"{server.url}/login?token=guessed", timeout=10), ids)

        link = server.link()
        browser = requests.Session()
        r = browser.get(link, allow_redirects=False, timeout=10)
        assert r.status_code == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie, cookie
        page = browser.get(f"{server.url}/api/records", timeout=10).json()
        assert {r["id"] for r in page["records"]} == set(ids) and page["total"] == len(ids)

        spent = requests.get(link, allow_redirects=False, timeout=10)
        assert spent.status_code == 401 and "used already" in no_data(spent, ids)
        assert server.link(after=link) != link, "a fresh link for another browser"
        forged = requests.get(f"{server.url}/api/records", cookies={"digitdraw_review": "forged"}, timeout=10)
        assert forged.status_code == 401 and no_data(forged, ids)

        csrf = browser.get(f"{server.url}/api/session", timeout=10).json()["csrf"]
        decision = {"ids": who["honest"][:1], "state": "approved", "reason": "a clear 0"}
        for headers in ({}, {"X-CSRF-Token": "not-it"},
                        {"X-CSRF-Token": csrf, "Origin": "http://attacker.example"}):
            r = browser.post(f"{server.url}/api/decisions", json=decision, headers=headers, timeout=10)
            assert r.status_code == 403 and no_data(r, ids)
        assert states_by_cli(store)[who["honest"][0]] == "pending"
        r = browser.post(f"{server.url}/api/decisions", json=decision, headers={"X-CSRF-Token": csrf,
                                                                                "Origin": server.url}, timeout=10)
        assert r.status_code == 200 and r.json()["decided"] == [{"id": who["honest"][0], "state": "approved"}]
        assert states_by_cli(store)[who["honest"][0]] == "approved"


def test_a_session_and_an_unused_link_expire(store, tmp_path):
    who = fill(store, honest=2)
    ids = [i for group in who.values() for i in group]
    with ReviewServer(store, str(tmp_path), "--session-seconds", "2", "--link-seconds", "1") as server:
        link = server.link()
        signed_in = requests.get(link, allow_redirects=False, timeout=10)
        fresh = server.link(after=link)
        # The cookie, sent on after its Max-Age as a replaying client would: the server ends it too.
        cookie = {"digitdraw_review": signed_in.cookies["digitdraw_review"]}
        assert requests.get(f"{server.url}/api/records", cookies=cookie, timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while (r := requests.get(f"{server.url}/api/records", cookies=cookie, timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.2)
        assert r.status_code == 401 and "session is over" in no_data(r, ids)
        late = requests.get(fresh, allow_redirects=False, timeout=10)  # printed at sign-in, valid for 1 s
        assert late.status_code == 401 and "expired" in no_data(late, ids)


def tile_ids(page):
    return page.eval_on_selector_all("[data-testid=tile]", "tiles => tiles.map(t => t.dataset.id)")


def tile(page, record_id):
    return page.locator(f"[data-testid=tile][data-id='{record_id}']")


def test_reviewing_in_the_browser_by_keyboard_and_mouse(store, tmp_path):
    who = fill(store)
    attackers = set(who["attacker-1"] + who["attacker-2"])
    with ReviewServer(store, str(tmp_path), "--refresh-seconds", "0", env={"DIGITDRAW_ACTOR": ACTOR}) as server, \
            sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: d.accept())
        page.goto(server.link())
        page.wait_for_selector("body[data-ready=true]")
        expect(page.get_by_test_id("reviewer")).to_have_text(ACTOR)
        expect(page.get_by_test_id("counts")).to_have_text("82 pending, 0 approved, 0 rejected")

        # The most suspicious first: the attackers' 42 records, then the honest writers'.
        first = tile_ids(page)
        assert len(first) == 48 and set(first[:42]) == attackers and not attackers & set(first[42:])
        expect(page.get_by_test_id("suspect-client").first).to_have_attribute("data-key", "attacker-1")
        assert axe_violations(page) == [], "the queue"

        # The keyboard: R rejects the digit in focus; arrows and Space select; R rejects the selection.
        page.get_by_test_id("reason").fill("flagged 1 labelled 7")
        boxes = page.get_by_test_id("select")
        boxes.nth(0).focus()
        page.keyboard.press("r")
        expect(tile(page, first[0])).to_have_attribute("data-state", "rejected")
        for _ in range(2):
            page.keyboard.press("ArrowRight")
            page.keyboard.press("Space")
        expect(page.locator(".tile.selected")).to_have_count(2)
        page.keyboard.press("r")
        for record_id in first[1:3]:
            expect(tile(page, record_id)).to_have_attribute("data-state", "rejected")
        expect(page.get_by_test_id("status")).to_have_text("Rejected 2 records.")

        # The mouse: one approved by its button, two rejected by their checkboxes and the toolbar.
        page.get_by_test_id("reason").fill("")
        tile(page, first[42]).get_by_test_id("approve").click()
        expect(tile(page, first[42])).to_have_attribute("data-state", "approved")
        for record_id in first[3:5]:
            tile(page, record_id).get_by_test_id("select").check()
        page.get_by_test_id("reject-selected").click()
        for record_id in first[3:5]:
            expect(tile(page, record_id)).to_have_attribute("data-state", "rejected")

        # The history of a record: who decided what, and why.
        tile(page, first[0]).get_by_test_id("select").focus()
        page.keyboard.press("h")
        expect(page.get_by_test_id("history")).to_be_visible()
        expect(page.get_by_test_id("history-list")).to_contain_text(f"rejected by {ACTOR}")
        expect(page.get_by_test_id("history-list")).to_contain_text("flagged 1 labelled 7")
        assert axe_violations(page) == [], "the history dialog"
        page.get_by_test_id("history-close").click()
        expect(page.get_by_test_id("history")).to_be_hidden()

        # One action rejects everything still pending from a client, then from the other.
        rejected = {*first[:5]}
        for client in ("attacker-1", "attacker-2"):
            suspect = page.locator(f"[data-testid=suspect-client][data-key={client}]")
            suspect.get_by_test_id("suspect-reject").click()
            expect(suspect).to_contain_text(f"· 0 of {len(who[client])} pending")
            rejected |= set(who[client])
        expect(page.get_by_test_id("counts")).to_have_text("39 pending, 1 approved, 42 rejected")

        # The pending queue, a page at a time (Shift+A approves a whole page), then back to the first.
        page.get_by_test_id("apply").click()
        expect(page.get_by_test_id("position")).to_have_text("page 1: 39 of 39 matching")
        page.get_by_test_id("filter-state").select_option("all")
        page.get_by_test_id("sort").select_option("newest")
        page.get_by_test_id("apply").click()
        expect(page.get_by_test_id("position")).to_have_text("page 1: 48 of 82 matching")
        seen = tile_ids(page)
        page.get_by_test_id("next").click()
        expect(page.get_by_test_id("position")).to_have_text("page 2: 34 of 82 matching")
        seen += tile_ids(page)
        assert len(seen) == len(set(seen)) == 82, "every record once"
        expect(page.get_by_test_id("next")).to_be_disabled()
        page.keyboard.press("p")
        expect(page.get_by_test_id("position")).to_have_text("page 1: 48 of 82 matching")
        assert tile_ids(page) == seen[:48]

        page.get_by_test_id("filter-state").select_option("pending")
        page.get_by_test_id("apply").click()
        expect(page.get_by_test_id("position")).to_have_text("page 1: 39 of 39 matching")
        pending = tile_ids(page)
        assert set(pending) == set(who["honest"]) - {first[42]}
        page.get_by_test_id("select").first.focus()
        page.keyboard.press("Shift+A")
        expect(page.get_by_test_id("status")).to_have_text("Approved 39 records.")
        expect(page.get_by_test_id("counts")).to_have_text("0 pending, 40 approved, 42 rejected")
        assert not errors, errors
        browser.close()

    # The review CLI reports what the page decided, and who decided it.
    states = states_by_cli(store)
    assert {i for i, s in states.items() if s == "rejected"} == rejected == attackers
    assert {i for i, s in states.items() if s == "approved"} == set(who["honest"])
    shown = cli(store, "show", first[1])
    assert ACTOR in shown and "flagged 1 labelled 7" in shown
    assert "does not look like its label" in cli(store, "show", first[3])


def test_behind_identity_aware_proxy_only_verified_reviewers_decide(store, tmp_path):
    who = fill(store, honest=3)
    ids = [i for group in who.values() for i in group]
    key, impostor = Key("iap-key-1"), Key("iap-key-1")
    keys = IapKeyServer([key])
    try:
        with ReviewServer(store, str(tmp_path), "--auth", "iap", "--iap-audience", AUDIENCE,
                          "--reviewers", "alice@example.com,carol@example.com", "--iap-keys-url", keys.url) as server:
            def get(path, token=None, **headers):
                if token:
                    headers["x-goog-iap-jwt-assertion"] = token
                return requests.get(server.url + path, headers=headers, timeout=10)

            page = get("/api/records", assertion(key)).json()
            assert {r["id"] for r in page["records"]} == set(ids)
            now = int(time.time())
            for token, status, why in (
                    (None, 401, "no IAP assertion"),
                    (assertion(key, audience="/projects/123456789012/global/backendServices/1"), 401, "wrong audience"),
                    (assertion(key, issued=now - 3600), 401, "expired"),
                    (assertion(impostor), 401, "does not verify"),
                    (assertion(key, "bob@example.com"), 403, "not a reviewer")):
                r = get("/api/records", token)
                assert r.status_code == status and why in no_data(r, ids), (why, r.status_code, r.text)
            r = get("/api/records", **{"x-goog-authenticated-user-email": "accounts.google.com:alice@example.com"})
            assert r.status_code == 401 and no_data(r, ids)
            assert get("/login?token=anything").status_code == 404

            token = assertion(key)
            session = get("/api/session", token).json()
            assert session["reviewer"] == "alice@example.com" and session["auth"] == "iap"
            decision = {"client": "attacker-2", "state": "rejected", "reason": "twelve flagged 1s labelled 7"}
            r = requests.post(f"{server.url}/api/decisions", json=decision, timeout=10,
                              headers={"x-goog-iap-jwt-assertion": token})
            assert r.status_code == 403 and no_data(r, ids)
            r = requests.post(f"{server.url}/api/decisions", json=decision, timeout=10,
                              headers={"x-goog-iap-jwt-assertion": token, "X-CSRF-Token": session["csrf"]})
            assert r.status_code == 200 and {d["id"] for d in r.json()["decided"]} == set(who["attacker-2"])
            assert get(f"/api/records/{who['attacker-2'][0]}", token).json()["history"][0]["by"] == "alice@example.com"
    finally:
        keys.close()
    states = states_by_cli(store)
    assert {i for i, s in states.items() if s == "rejected"} == set(who["attacker-2"])
    assert "rejected by alice@example.com" in cli(store, "show", who["attacker-2"][0])
