"""Token buckets for POST /feedback: one per client, one per network, one for the worker.

A client (an IPv4 address, an IPv6 /64: service/clients.py) may send ``per_minute``
corrections a minute, in bursts of up to that many; a network (an IPv4 /24, an IPv6 /48)
``network_per_minute``, so a host that walks through its /64's addresses, or a few hosts of
one site, still share one allowance; the worker as a whole takes POD_FACTOR times the
client's. A person correcting digits sends one every few seconds at most, so the defaults
(30 a minute per client, 120 per network, 600 a worker) never stop a person and stop a
script long before it fills a bucket with junk. Buckets are kept for the most recent
MAX_KEYS clients and networks only, so memory stays bounded.

The limits are per worker process: with WEB_CONCURRENCY=1, as deployed, that is per pod.
"""
import math
import threading
import time
from collections import OrderedDict

POD_FACTOR = 20
MAX_KEYS = 10_000


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, capacity, now):
        self.tokens, self.at = capacity, now


class _Buckets:
    """The buckets of one kind (clients or networks), the least recently used dropped first."""

    def __init__(self, per_minute):
        self.capacity, self.rate = per_minute, per_minute / 60.0
        self.buckets = OrderedDict()

    def get(self, key, now):
        bucket = self.buckets.pop(key, None) or _Bucket(self.capacity, now)
        self.buckets[key] = bucket
        if len(self.buckets) > MAX_KEYS:
            self.buckets.popitem(last=False)
        return bucket


class RateLimiter:
    def __init__(self, per_minute, network_per_minute=0, clock=time.monotonic):
        self.clock = clock
        self.clients = _Buckets(per_minute)
        self.networks = _Buckets(network_per_minute)
        self.pod = _Buckets(per_minute * POD_FACTOR)
        self.lock = threading.Lock()

    def wait(self, client, network):
        """0 if ``client`` of ``network`` may send now (a token is taken from each of its
        buckets), else the seconds until it may."""
        if self.clients.capacity == 0:
            return 0
        now = self.clock()
        with self.lock:
            kinds = [(self.clients, client), (self.pod, "")]
            if self.networks.capacity:
                kinds.append((self.networks, network))
            buckets = [(kind, kind.get(key, now)) for kind, key in kinds]
            need = max(self._need(bucket, kind.capacity, kind.rate, now) for kind, bucket in buckets)
            if need > 0:
                return max(1, math.ceil(need))
            for _, bucket in buckets:
                bucket.tokens -= 1
            return 0

    @staticmethod
    def _need(bucket, capacity, rate, now):
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        return 0 if bucket.tokens >= 1 else (1 - bucket.tokens) / rate
