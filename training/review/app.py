"""The review page's HTTP app (Flask): the page, its JSON API, and who may use them.

Every route but /healthz and /login needs a reviewer (training/review/auth.py); a request
without one gets 401 or 403 and a JSON error, never a record. Requests that decide also need
the reviewer's CSRF token. Every response carries a strict Content-Security-Policy (the
page is plain files: no inline script or style) and is not cached.

    GET  /login?token=T           spend a one-time sign-in link: session cookie, then the page
    GET  /                        the page (training/review/page/)
    GET  /api/session             who is signed in, the CSRF token, when the session ends
    GET  /api/records             one page of the queue: filters, sort, cursor (queue.Query)
    GET  /api/records/<id>        one record and its decision history
    GET  /api/suspects            the most suspicious clients and networks (triage)
    POST /api/decisions           approve or reject records, or every pending one of a client or network
    GET  /healthz                 alive (no data)
"""
import json
import logging
import os

from flask import Flask, Response, g, redirect, request, send_from_directory
from werkzeug.exceptions import HTTPException

from service.store import StoreError

from . import auth as auth_module
from .queue import KINDS, STATES, Query, QueryError, RECORD_ID

log = logging.getLogger("training.review")

PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
PAGE_FILES = {"review.js", "review.css", "favicon.svg"}
# The public page's policy (service/app.py: CSP) without data: and blob: images, which
# this page does not use: its digits are drawn on canvases.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store", "Permissions-Policy": "camera=(), microphone=(), geolocation=()"}
MAX_IDS = 500          # records one POST /api/decisions may decide
MAX_REASON = 500       # characters of a reason
OPEN = {"/healthz", "/login"}


def error(status, code, message):
    return Response(json.dumps({"error": {"code": code, "message": message}}), status, mimetype="application/json")


def answer(obj, status=200):
    return Response(json.dumps(obj, separators=(",", ":")), status, mimetype="application/json")


def create_app(queue, auth):
    """The app over ``queue`` (queue.Queue) with ``auth`` (auth.LinkAuth or auth.IapAuth)."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 256 * 1024

    @app.before_request
    def who():
        if request.path in OPEN:
            return None
        try:
            g.reviewer = auth.identify(request.environ)
            if request.method not in ("GET", "HEAD"):
                auth_module.check_write(request.environ, g.reviewer)
        except auth_module.Denied as e:
            return error(e.status, e.code, e.message)
        return None

    @app.after_request
    def headers(response):
        response.headers.update(HEADERS)
        return response

    @app.errorhandler(HTTPException)
    def http_error(e):
        messages = {404: ("not_found", f"nothing at {request.path[:80]}"),
                    405: ("method_not_allowed", f"{request.method} is not allowed on {request.path[:80]}"),
                    413: ("body_too_large", "the request body is too large; decide fewer records at once")}
        code, message = messages.get(e.code, ("bad_request" if e.code < 500 else "internal_error", e.description))
        return error(e.code, code, message)

    @app.errorhandler(QueryError)
    def bad_query(e):
        return error(e.status, e.code, str(e))

    @app.errorhandler(StoreError)
    def store_down(e):
        log.warning(f"review: {request.method} {request.path[:200]}: the store failed: {str(e)[:300]}")
        return error(503, "store_unavailable", "the feedback store cannot be reached right now; try again in a "
                                               "minute (the review server's log says why)")

    @app.errorhandler(Exception)
    def failed(e):
        log.error(f"review: {request.method} {request.path[:200]} failed: {type(e).__name__}: {str(e)[:300]}")
        return error(500, "internal_error", "the review server failed on this request; its log says why")

    @app.get("/healthz")
    def healthz():
        return answer({"status": "ok"})

    @app.get("/login")
    def login():
        if auth.scheme != "link":
            return error(404, "not_found", "this review server signs people in through Identity-Aware Proxy")
        try:
            session, reviewer = auth.sign_in(request.args.get("token", ""))
        except auth_module.Denied as e:
            return error(e.status, e.code, e.message)
        response = redirect("/", 303)
        response.set_cookie(auth_module.COOKIE, session, max_age=auth.session_seconds, httponly=True,
                            samesite="Strict", secure=request.is_secure, path="/")
        print(f"review: a browser signed in; for another browser: {link_for(request.host_url, auth)}", flush=True)
        return response

    @app.get("/")
    def page():
        return send_from_directory(PAGE_DIR, "index.html")

    @app.get("/<name>")
    def page_file(name):
        if name not in PAGE_FILES:
            return error(404, "not_found", f"nothing at /{name[:80]}")
        return send_from_directory(PAGE_DIR, name)

    @app.get("/api/session")
    def session():
        r = g.reviewer
        return answer({"reviewer": r.name, "csrf": r.csrf, "expires": r.expires, "auth": auth.scheme,
                       "store": queue.store.uri})

    @app.get("/api/records")
    def records():
        return answer(queue.page(Query.parse(request.args)))

    @app.get("/api/records/<record_id>")
    def record(record_id):
        if not RECORD_ID.fullmatch(record_id):
            return error(400, "bad_request", "a record id is 64 lowercase hex digits")
        found = queue.record(record_id)
        if found is None:
            return error(404, "not_found", f"no record {record_id} in the queue")
        return answer(found)

    @app.get("/api/suspects")
    def suspects():
        return answer(queue.suspects())

    @app.post("/api/decisions")
    def decisions():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "bad_request", "send a JSON object: {\"state\", \"reason\", and \"ids\", \"client\" "
                                             "or \"network\"}")
        state, reason = body.get("state"), body.get("reason")
        if state not in STATES[1:]:
            return error(400, "bad_request", f"\"state\" must be one of {list(STATES[1:])}")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            return error(400, "bad_request", f"say why in \"reason\" (1 to {MAX_REASON} characters)")
        chosen = [k for k in ("ids", *KINDS) if body.get(k) is not None]
        if len(chosen) != 1:
            return error(400, "bad_request", "give exactly one of \"ids\", \"client\" or \"network\"")
        if chosen == ["ids"]:
            ids = body["ids"]
            if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or \
                    not all(isinstance(i, str) and RECORD_ID.fullmatch(i) for i in ids):
                return error(400, "bad_request", f"\"ids\" must be 1 to {MAX_IDS} record ids (64 hex digits)")
        else:
            kind = chosen[0]
            if not isinstance(body[kind], str) or not body[kind]:
                return error(400, "bad_request", f"\"{kind}\" must be a {kind} key as /api/suspects lists it")
            ids = queue.pending_of(kind, body[kind])
        return answer(queue.decide(ids, state, g.reviewer.name, reason.strip()))

    return app


def link_for(base_url, auth):
    """A fresh one-time sign-in link on ``base_url`` (http://host:port/)."""
    return f"{base_url.rstrip('/')}/login?token={auth.new_link_token()}"

