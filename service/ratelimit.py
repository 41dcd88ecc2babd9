"""Token buckets for POST /feedback: one per client address, and one for the whole worker.

A client may send ``per_minute`` corrections a minute, in bursts of up to that many; the
worker as a whole takes POD_FACTOR times as many. A person correcting digits sends one
every few seconds at most, so the default (30 a minute per client, 600 a worker) never
stops a person and stops a script long before it fills a bucket with junk. Client buckets
are kept for the most recent MAX_CLIENTS addresses only, so memory stays bounded.

The limits are per worker process: with WEB_CONCURRENCY=1, as deployed, that is per pod.

The client is the right-most public address in X-Forwarded-For (``client_address``). On
Knative every hop inside the cluster (Kourier, the activator, the queue-proxy) appends the
private address it was called from, and Kourier appends the address it saw; a client can
only add entries to the left of those. So the first public address from the right is the
one our own edge saw, which needs Kourier's load balancer to keep client addresses
(externalTrafficPolicy: Local, set by infra/install-operators.sh).
"""
import ipaddress
import math
import threading
import time
from collections import OrderedDict

POD_FACTOR = 20
MAX_CLIENTS = 10_000


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, capacity, now):
        self.tokens, self.at = capacity, now


class RateLimiter:
    def __init__(self, per_minute, clock=time.monotonic):
        self.capacity = per_minute
        self.rate = per_minute / 60.0  # tokens a second
        self.clock = clock
        self.clients = OrderedDict()
        self.pod = _Bucket(per_minute * POD_FACTOR, clock())
        self.lock = threading.Lock()

    def wait(self, client):
        """0 if ``client`` may send now (a token is taken), else the seconds until it may."""
        if self.capacity == 0:
            return 0
        now = self.clock()
        with self.lock:
            bucket = self.clients.pop(client, None) or _Bucket(self.capacity, now)
            self.clients[client] = bucket
            if len(self.clients) > MAX_CLIENTS:
                self.clients.popitem(last=False)
            waits = [self._need(bucket, self.capacity, self.rate, now),
                     self._need(self.pod, self.capacity * POD_FACTOR, self.rate * POD_FACTOR, now)]
            if max(waits) > 0:
                return max(1, math.ceil(max(waits)))
            bucket.tokens -= 1
            self.pod.tokens -= 1
            return 0

    @staticmethod
    def _need(bucket, capacity, rate, now):
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        return 0 if bucket.tokens >= 1 else (1 - bucket.tokens) / rate


def client_address(environ):
    """The address a request came from: the right-most public X-Forwarded-For entry, else the peer."""
    for entry in reversed(environ.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        try:
            address = ipaddress.ip_address(entry.strip())
        except ValueError:
            continue
        if address.is_global:
            return str(address)
    return environ.get("REMOTE_ADDR", "")
