"""Fast tests of the service's own small machines, in process: the metrics exposition, the
log lines, the local store, the rate limiter, the configuration and the request layer.
`make unit` runs these (and every other test not marked slow) in seconds."""
import json
import os
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import clients, config, contract, log, metrics, ratelimit
from service.errors import json_response
from service.front import _environ
from service.store import AlreadyExists, LocalStore, PointerConflict, StoreNotFound, StoreUnreachable
from service.wsgi import REJECTED, RequestLayer


# ---- metrics ------------------------------------------------------------------------------

def samples(m, **kw):
    """{(name, sorted labels): value} of everything ``m`` renders, read by Prometheus's parser."""
    out = {}
    for family in text_string_to_metric_families(m.render(**kw)):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_are_split_by_model_version_and_add_up_across_slots():
    m = metrics.Metrics(["/predict", "/healthz"], slots=2)
    m.observe_request("/healthz", 200, 0.001)  # before any model: "none"
    m.model_event("ok", "v1")
    m.observe_request("/predict", 200, 0.003)
    m.observe_predictions([0.97, 0.55], "v1")
    m.use_slot(1)  # a second worker, serving another version
    m.model_event("ok", "v2")
    m.observe_request("/predict", 200, 0.002)
    m.observe_request("/predict", 418, 0.5)  # a status we do not list counts as "other"
    m.observe_feedback("stored", "v1", correction=True)  # about v1's answer, on v2's worker
    m.observe_empty_canvas("v2")
    got = samples(m, mode="following")
    assert got["digitdraw_requests_total", (("model_version", "none"), ("route", "/healthz"), ("status", "200"))] == 1
    assert got["digitdraw_requests_total", (("model_version", "v1"), ("route", "/predict"), ("status", "200"))] == 1
    assert got["digitdraw_requests_total", (("model_version", "v2"), ("route", "/predict"), ("status", "other"))] == 1
    assert got["digitdraw_predictions_total", (("model_version", "v1"),)] == 2
    conf = {k[1]: v for k, v in got.items() if k[0] == "digitdraw_prediction_confidence_bucket"}
    assert conf[(("le", "0.6"), ("model_version", "v1"))] == 1 and conf[(("le", "+Inf"), ("model_version", "v1"))] == 2
    assert got["digitdraw_prediction_confidence_sum", (("model_version", "v1"),)] == pytest.approx(1.52)
    assert got["digitdraw_feedback_total", (("model_version", "v1"), ("result", "stored"))] == 1
    assert got["digitdraw_corrections_total", (("model_version", "v1"),)] == 1
    assert got["digitdraw_empty_canvas_total", (("model_version", "v2"),)] == 1
    # model_info lists live workers only: this process holds both slots here.
    assert got["digitdraw_model_info", (("mode", "following"), ("version", "v2"), ("worker", "1"))] == 1
    latency = {k[1]: v for k, v in got.items() if k[0] == "digitdraw_request_duration_seconds_bucket"
               and ("model_version", "v2") in k[1]}
    assert latency[(("le", "0.0025"), ("model_version", "v2"), ("route", "/predict"))] == 1
    assert latency[(("le", "+Inf"), ("model_version", "v2"), ("route", "/predict"))] == 2


def feedback_counts(m):
    return {dict(k[1])["model_version"]: v for k, v in samples(m).items() if k[0] == "digitdraw_feedback_total"}


def test_versions_past_the_rows_count_as_other_and_never_reset():
    m = metrics.Metrics(["/feedback"], slots=1)
    names = [f"20261201T0000{k:02d}Z-0000000{k % 10}" for k in range(metrics.NAMED_ROWS + 3)]
    for _ in range(2):
        for name in names:
            m.observe_feedback("stored", name)
    kept = feedback_counts(m)
    assert len(kept) == metrics.NAMED_ROWS + 1 and kept["other"] == 2 * 3
    assert all(v == 2 for k, v in kept.items() if k != "other")
    for k in range(metrics.SERVED_ROWS + 2):  # more hot swaps than a worker lives through
        m.model_event("ok", f"served-{k}")
        m.observe_predictions([0.9], f"served-{k}")
    served = {dict(k[1])["model_version"] for k, v in samples(m).items() if k[0] == "digitdraw_predictions_total"}
    # One served row holds "none" (before any model); the versions past the rows count as "other".
    assert served == {f"served-{k}" for k in range(metrics.SERVED_ROWS - 1)} | {"other"}


def test_no_client_can_push_the_served_version_out_of_its_row():
    """20 feedback requests naming versions the store holds (or made-up ones, which the
    handler counts as unknown) before a new model arrives: the new model's predictions still
    count under its own version, and corrections about it too."""
    m = metrics.Metrics(["/feedback", "/predict"], slots=1)
    m.model_event("ok", "v1")
    for k in range(20):
        m.observe_feedback("stored", f"old-{k}", correction=True)
        m.observe_feedback("stored", metrics.UNKNOWN, correction=True)
    m.model_event("ok", "v2")
    m.observe_predictions([0.9, 0.8], "v2")
    m.observe_request("/predict", 200, 0.001, "v2")
    m.observe_feedback("stored", "v2", correction=True)
    got = samples(m)
    assert got["digitdraw_predictions_total", (("model_version", "v2"),)] == 2
    assert got["digitdraw_corrections_total", (("model_version", "v2"),)] == 1
    assert got["digitdraw_corrections_total", (("model_version", "unknown"),)] == 20
    assert got["digitdraw_corrections_total", (("model_version", "other"),)] == 20 - metrics.NAMED_ROWS


def test_a_worker_taking_over_a_slot_keeps_its_counts():
    m = metrics.Metrics(["/predict"], slots=2)
    m.use_slot(1)
    m.model_event("ok", "v1")
    m.observe_request("/predict", 200, 0.001)
    m.use_slot(1)  # the replacement of a dead worker, in the same slot
    m.observe_request("/predict", 200, 0.001)
    assert samples(m)["digitdraw_requests_total", (("model_version", "v1"), ("route", "/predict"),
                                                   ("status", "200"))] == 2


# ---- log lines ----------------------------------------------------------------------------

def test_the_request_line_is_one_json_object(capfd):
    log.setup("INFO")
    log.request_line("POST", "/predict" + "x" * 1000, 200, 0.0012345, "v1", "rid-1")
    (line,) = capfd.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["severity"] == "INFO" and entry["logger"] == "service.request" and entry["status"] == 200
    assert entry["latency_ms"] == 1.234 and entry["model_version"] == "v1" and entry["request_id"] == "rid-1"
    assert len(entry["path"]) == 512 and entry["time"].endswith("Z")


def test_an_unexpected_error_is_one_line_with_where_it_happened(capfd):
    log.setup("INFO")
    try:
        {}["missing"]
    except KeyError as e:
        log.error_line(e, "GET", "/x", "rid-2")
    (line,) = capfd.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["severity"] == "ERROR" and "KeyError" in entry["message"] and entry["request_id"] == "rid-2"
    assert entry["where"].startswith(__file__) and "Traceback" not in line


# ---- the request layer --------------------------------------------------------------------

def call(layer, environ):
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(layer(environ, start_response))
    return int(got["status"][:3]), got["headers"], body


def test_an_app_that_raises_gets_a_500_json_with_the_request_id(capfd):
    def broken(environ, start_response):
        raise RuntimeError("a bug")

    log.setup("INFO")
    m = metrics.Metrics(["/x"], slots=1)
    layer = RequestLayer(broken, m, lambda p: p, [("X-Content-Type-Options", "nosniff")], [])
    status, headers, body = call(layer, {"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "HTTP_X_REQUEST_ID": "abc"})
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error" and "abc" in body.decode()
    assert headers["X-Request-Id"] == "abc" and headers["X-Content-Type-Options"] == "nosniff"
    errors = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"ERROR"' in line]
    assert len(errors) == 1 and errors[0]["request_id"] == "abc"


def test_a_request_the_front_refused_is_answered_like_any_error():
    def never(environ, start_response):
        raise AssertionError("the app must not see a refused request")

    m = metrics.Metrics(["/predict"], slots=1)
    layer = RequestLayer(never, m, lambda p: p, [], ["https://a.example"])
    status, headers, body = call(layer, {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "HTTP_ORIGIN":
                                         "https://a.example", REJECTED: ("request_timeout", "too slow")})
    assert (status, json.loads(body)) == (408, {"error": {"code": "request_timeout", "message": "too slow"}})
    assert headers["Access-Control-Allow-Origin"] == "https://a.example" and "Retry-After" in \
        headers["Access-Control-Expose-Headers"]
    assert "408" in m.render()


def test_the_wsgi_environ_of_an_rsgi_scope():
    class Headers(dict):
        def items(self):
            return [("content-type", "application/json"), ("content-length", "12"), ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "10.0.0.1")]

    class Scope:
        method, path, query_string, server, client = "POST", "/pré dict", "a=1", "127.0.0.1:8080", "[::1]:5555"
        http_version, scheme, headers = "1.1", "http", Headers()

    environ = _environ(Scope())
    assert environ["PATH_INFO"] == "/pré dict".encode().decode("latin-1")  # PEP 3333's bytes-as-latin-1
    assert environ["CONTENT_TYPE"] == "application/json" and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4,10.0.0.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"], environ["REMOTE_ADDR"]) == ("127.0.0.1", "8080", "::1")


# ---- the local store ----------------------------------------------------------------------

def test_the_local_store_creates_once_replaces_whole_and_lists(tmp_path):
    store = LocalStore(str(tmp_path))
    store.create("records/a.json", b"1")
    with pytest.raises(AlreadyExists):
        store.create("records/a.json", b"2")
    assert store.read("records/a.json") == b"1"
    store.put("report/m.json", b"x")
    store.put("report/m.json", b"y")
    assert store.read("report/m.json") == b"y"
    assert store.list() == ["records/a.json", "report/m.json"] and store.children() == ["records", "report"]
    assert store.md5("records/a.json") == "c4ca4238a0b923820dcc509a6f75849b" and store.md5("nope") is None
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if f.startswith(".tmp-")]
    store.delete("report")
    assert store.list() == ["records/a.json"] and store.list("nothing/here") == []
    with pytest.raises(StoreNotFound):
        store.read("report/m.json")


def test_two_creates_at_once_one_wins(tmp_path):
    store, results = LocalStore(str(tmp_path)), []

    def create(data):
        try:
            store.create("k", data)
            results.append(data)
        except AlreadyExists:
            results.append(None)

    threads = [threading.Thread(target=create, args=(bytes([i]) * 100_000,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (winner,) = [r for r in results if r is not None]
    assert store.read("k") == winner  # whole: never a mix of two writers


def test_latest_moves_only_by_compare_and_swap(tmp_path):
    store = LocalStore(str(tmp_path))
    assert store.read_latest() == (None, None)
    store.swap_latest({"version": "a"}, None)
    pointer, token = store.read_latest()
    store.swap_latest({"version": "b"}, token)
    with pytest.raises(PointerConflict):
        store.swap_latest({"version": "c"}, token)  # read before b moved it
    assert store.read_latest()[0] == {"version": "b"}
    assert json.loads((tmp_path / contract.LATEST).read_text()) == {"version": "b"}


def test_a_missing_store_directory_is_unreachable_not_empty(tmp_path):
    store = LocalStore(str(tmp_path / "unmounted"))
    for fn in (lambda: store.read("x"), lambda: store.list("records")):
        with pytest.raises(StoreUnreachable, match="does not exist"):
            fn()


# ---- rate limits and client addresses -------------------------------------------------------

def test_a_client_gets_its_limit_then_waits_and_the_worker_has_its_own():
    now = [0.0]
    limiter = ratelimit.RateLimiter(3, clock=lambda: now[0])
    assert [limiter.wait("a", "n1") for _ in range(4)] == [0, 0, 0, 20]  # 3 a minute: one token every 20 s
    now[0] += 20
    assert limiter.wait("a", "n1") == 0 and limiter.wait("a", "n1") == 20
    assert limiter.wait("b", "n1") == 0  # another client has its own bucket
    for k in range(3 * ratelimit.POD_FACTOR):  # many clients, one worker
        limiter.wait(f"c{k}", f"n{k}")
    assert limiter.wait("fresh", "fresh") > 0
    assert ratelimit.RateLimiter(0, 5).wait("x", "y") == 0  # 0 turns the limits off


def test_a_network_has_its_own_limit_beside_its_clients():
    now = [0.0]
    limiter = ratelimit.RateLimiter(3, 5, clock=lambda: now[0])
    waits = [limiter.wait(f"client-{k}", "net") for k in range(6)]  # six clients, one network
    assert waits == [0, 0, 0, 0, 0, 12]  # 5 a minute: one token every 12 s
    assert limiter.wait("client-9", "another-net") == 0


def address(environ, trusted=""):
    found = clients.client_address(environ, config.load({"FORWARDED_ALLOW_IPS": trusted})["FORWARDED_ALLOW_IPS"])
    return None if found is None else str(found)


def test_the_client_is_the_peer_unless_a_trusted_proxy_vouches():
    spoof = "203.0.113.9"
    # No trusted proxy (a bare python -m service): X-Forwarded-For is never read.
    assert address({"REMOTE_ADDR": "198.51.100.7", "HTTP_X_FORWARDED_FOR": spoof}) == "198.51.100.7"
    assert address({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": spoof}) == "127.0.0.1"
    # A peer that is not among the trusted proxies is the client, whatever it forwards.
    assert address({"REMOTE_ADDR": "198.51.100.7", "HTTP_X_FORWARDED_FOR": spoof}, "127.0.0.1") == "198.51.100.7"


def test_behind_trusted_proxies_the_client_is_the_entry_our_edge_appended():
    trusted = "127.0.0.1,10.0.0.0/8"
    # Kourier appended the client (198.51.100.7); the activator and the queue-proxy the pods
    # they were called from; whatever the client wrote is to the left.
    knative = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9, 198.51.100.7, 10.4.0.12, 10.4.1.3"}
    assert address(knative, trusted) == "198.51.100.7"
    # A client inside a trusted network cannot push its own entries past ours either.
    assert address({**knative, "HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.9.9.9, 10.4.1.3"}, trusted) == "203.0.113.9"
    # Not an address: walking stops at the last hop we trust.
    assert address({**knative, "HTTP_X_FORWARDED_FOR": "garbage, 10.4.1.3"}, trusted) == "10.4.1.3"
    assert address({"REMOTE_ADDR": "127.0.0.1"}, trusted) == "127.0.0.1"
    assert address({**knative, "HTTP_X_FORWARDED_FOR": "2001:db8:1:2::5, 10.4.1.3"}, trusted) == "2001:db8:1:2::5"
    assert address({**knative, "HTTP_X_FORWARDED_FOR": "::ffff:198.51.100.7"}, trusted) == "198.51.100.7"


def test_ipv6_clients_are_their_64_and_networks_their_48():
    a, b = clients.parse("2001:db8:1:2::5"), clients.parse("2001:db8:1:2:ffff:1:2:3")
    assert clients.client_of(a) == clients.client_of(b) == "2001:db8:1:2::/64"
    assert clients.client_of(clients.parse("2001:db8:1:3::5")) != clients.client_of(a)
    assert clients.network_of(clients.parse("2001:db8:1:3::5")) == clients.network_of(a) == "2001:db8:1::/48"
    assert clients.client_of(clients.parse("198.51.100.7")) == "198.51.100.7/32"
    assert clients.network_of(clients.parse("198.51.100.7")) == "198.51.100.0/24"
    assert clients.client_of(None) == clients.network_of(None) == "?"


def test_the_network_key_is_a_keyed_hash_of_the_24_or_64():
    key = clients.NetworkKey("s" * 32)
    v4 = key(clients.parse("198.51.100.7"))
    assert v4.startswith("v4:") and len(v4) == 19 and "198" not in v4
    assert key(clients.parse("198.51.100.200")) == v4 != key(clients.parse("198.51.101.7"))
    v6 = key(clients.parse("2001:db8:1:2::5"))
    assert v6.startswith("v6:") and key(clients.parse("2001:db8:1:2:ffff::9")) == v6
    assert key(clients.parse("2001:db8:1:3::5")) != v6
    assert clients.NetworkKey("t" * 32)(clients.parse("198.51.100.7")) != v4  # another secret, another key
    assert key(None) is None


# ---- configuration --------------------------------------------------------------------------

def test_every_setting_has_a_default_and_bad_values_name_the_variable():
    cfg = config.load({})
    assert {name for name, *_ in config.SETTINGS} == set(cfg)
    assert cfg["MODEL_VERSION"] == "" and cfg["READ_TIMEOUT_SECONDS"] == 10 and cfg["MAX_IMAGE_SIDE"] == 1024
    for env, text in (({"PORT": "http"}, "PORT='http' is not an integer"), ({"THREADS": "0"}, "THREADS=0 is below"),
                      ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud'"), ({"MODEL_VERSION": "a/b"}, "MODEL_VERSION='a/b'")):
        with pytest.raises(ValueError, match=text):
            config.load(env)
    assert config.load({"CORS_ORIGINS": "https://a.example/, *"})["CORS_ORIGINS"] == ["https://a.example", "*"]
    with pytest.raises(ValueError, match="FORWARDED_ALLOW_IPS='10.0.0.0/33'"):
        config.load({"FORWARDED_ALLOW_IPS": "10.0.0.0/33"})
    with pytest.raises(ValueError, match="FEEDBACK_NETWORK_SECRET is 6 characters"):
        config.load({"FEEDBACK_NETWORK_SECRET": "short!"})
    assert all(name in config.table() for name, *_ in config.SETTINGS)


def test_json_response_is_compact_json():
    r = json_response({"a": [1, 2]}, 201)
    assert (r.status_code, r.mimetype, r.get_data()) == (201, "application/json", b'{"a":[1,2]}')


# ---- what a drawing is ----------------------------------------------------------------------

def as_record(im):
    """The 28x28 pixels (uint8, ink 255) a record holds for a PIL image, and its ink's side."""
    import io

    from service import ink, preprocess

    buf = io.BytesIO()
    im.save(buf, "PNG")
    decoded = preprocess.decode(buf.getvalue(), preprocess.Limits(10 ** 6))
    return contract.to_pixels(preprocess.to_mnist(decoded)), max(ink.ink_image(decoded).size)


def test_drawings_are_drawings_and_dots_blobs_and_noise_are_not():
    import numpy as np
    from PIL import Image, ImageDraw

    def canvas(draw):
        im = Image.new("L", (280, 280), 255)
        draw(ImageDraw.Draw(im))
        return im

    seven = canvas(lambda d: d.line([(80, 60), (200, 60), (120, 235)], fill=0, width=25, joint="curve"))
    one = canvas(lambda d: d.line([(140, 45), (140, 235)], fill=0, width=18))
    zero = canvas(lambda d: d.ellipse([95, 50, 185, 230], outline=0, width=18))
    for im in (seven, one, zero):
        pixels, side = as_record(im)
        assert contract.not_a_drawing(pixels, [[[0.3, 0.2], [0.7, 0.2], [0.4, 0.85]]], side) is None
    rng = np.random.default_rng(0)
    refused = {
        "a 1x1 dot": Image.new("L", (1, 1), 0),
        "a click of the pen": canvas(lambda d: d.ellipse([128, 128, 153, 153], fill=0)),
        "a filled square": Image.new("L", (64, 64), 0),
        "64x64 random noise": Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)),
        "280x280 sparse noise": Image.fromarray(np.where(rng.random((280, 280)) < 0.1, 0, 255).astype(np.uint8)),
        "a 24x24 mesh of noise": Image.fromarray(np.where(rng.random((24, 24)) < 0.5, 0, 255).astype(np.uint8)),
    }
    for what, im in refused.items():
        pixels, side = as_record(im)
        assert contract.not_a_drawing(pixels, None, side), what
        assert contract.not_a_drawing(pixels) or side < contract.MIN_INK_SIDE, what  # from the 28x28 alone
    seven_pixels, side = as_record(seven)
    assert "strokes" in contract.not_a_drawing(seven_pixels, [[[0.5, 0.5], [0.52, 0.51]]], side)
    assert "dot" in contract.not_a_drawing(seven_pixels, None, 5)
    assert contract.not_a_drawing(np.zeros((28, 28), np.uint8)) == "there is no ink"
