"""The server's front door: Granian hands every request here (RSGI) before any request thread.

- **The body is read here, on the event loop**, with a deadline (READ_TIMEOUT_SECONDS) and
  the size limit (MAX_BODY_BYTES, whether the client sent a Content-Length or chunks). A
  stalled upload is a waiting coroutine, not a blocked thread, and gets 408 when its time
  is up; an oversized one gets 413 (its rest is read and dropped, within the deadline).
  Granian's own header-read timeout (the same setting) closes connections that never
  finish their headers.
- **Then the app runs** (plain WSGI: Flask) on the event loop itself, for every request but
  those that wait on a store (WAITS_ON_A_STORE: POST /feedback), which run on THREADS
  request threads. Every other request costs milliseconds of CPU at most (the image limits
  bound it, docs/serving.md), so liveness waits behind at most one of them, and never
  behind a slow upload or a slow bucket. Handing every request to a thread instead cost
  0.3-0.5 ms of CPU per request more (docs/benchmarks.md).

Errors found here (408, 413) go through the app with the request (``REJECTED``), so they get
the same JSON body, request id, headers, metrics and log line as every other response.
Header names with an underscore are dropped (``_environ``).

Why not asgiref's WsgiToAsgi or a2wsgi: neither bounds the time a body may take, which is
the point of this layer, and both hand every request to a thread, the cost measured above.
"""
import asyncio
import io
import sys
from concurrent.futures import ThreadPoolExecutor

from .wsgi import REJECTED

# Requests that wait on the network (a GCS write can take seconds): they run on the request
# threads, so the event loop, and every other request, never waits for a bucket.
WAITS_ON_A_STORE = {"/feedback"}


class _Reading:
    too_large = False


class Front:
    """The RSGI application around ``wsgi_app``."""

    def __init__(self, wsgi_app, max_body_bytes, read_timeout, threads):
        self.app, self.max_body, self.timeout = wsgi_app, max_body_bytes, read_timeout
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="request")

    async def __rsgi__(self, scope, protocol):
        if scope.proto != "http":
            return
        environ = _environ(scope)
        body, reading = b"", _Reading()
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._body(scope, protocol, reading)
        except TimeoutError:
            environ[REJECTED] = ("request_timeout", f"the request body did not arrive within {self.timeout:g} s; "
                                                    "send it at once, or retry on a faster connection")
        if reading.too_large:
            environ[REJECTED] = ("body_too_large", f"the request body is over the limit of {self.max_body} bytes; "
                                                   "send a smaller image")
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if scope.path in WAITS_ON_A_STORE:
            status, headers, data = await asyncio.get_running_loop().run_in_executor(self.pool, self._call, environ)
        else:
            status, headers, data = self._call(environ)
        protocol.response_bytes(status, headers, data)

    async def _body(self, scope, protocol, reading):
        """The whole body, or b"" with ``reading.too_large`` set once it passes the limit.
        Past the limit the rest is read and dropped (within the deadline), so the client
        gets its 413 instead of a connection reset in the middle of its upload."""
        length = scope.headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) == 0:
                return b""  # hyper refuses a malformed length; an empty body needs no reading
            reading.too_large = int(length) > self.max_body
            if not reading.too_large:
                return await protocol()  # one await: Granian collects it, cheaper than chunk by chunk
        elif "chunked" not in scope.headers.get("transfer-encoding", ""):
            return b""
        chunks, size = [], 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.max_body:
                reading.too_large = True
            if not reading.too_large:
                chunks.append(chunk)
        return b"" if reading.too_large else b"".join(chunks)

    def _call(self, environ):
        """Run the WSGI app on one request; return (status, headers, body)."""
        response = []

        def start_response(status, headers, exc_info=None):
            response[:] = [int(status[:3]), [*headers, ("server", "digitdraw")]]

        chunks = self.app(environ, start_response)
        try:
            data = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        return response[0], response[1], data


def _environ(scope):
    """The WSGI environ (PEP 3333) of an RSGI HTTP scope."""
    host, _, port = scope.server.rpartition(":")
    remote = scope.client.rpartition(":")[0]
    environ = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        # RSGI gives the path percent-decoded; WSGI wants those bytes as latin-1.
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": host, "SERVER_PORT": port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": remote.strip("[]"),
        "wsgi.version": (1, 0), "wsgi.url_scheme": scope.scheme, "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    for name, value in scope.headers.items():
        # A name with "_" would share its WSGI key with the name spelt with "-" (X_Forwarded_For
        # would join X-Forwarded-For), so it is dropped, as nginx drops it by default.
        if name == "content-length" or "_" in name:
            continue
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
