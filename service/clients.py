"""Who sent a request: its address, the client and network it counts as, and the keyed hash
of its network that a correction carries.

**The address** (``client_address``) is the peer's, unless the peer is a proxy the deployment
trusts (FORWARDED_ALLOW_IPS). Then it is the right-most X-Forwarded-For entry that is not a
trusted proxy: each proxy appends the address it was called from, so walking from the right
past our own proxies reaches the entry our edge appended, and never one a client wrote (a
client can only add entries to the left of it). On Knative that entry is Kourier's: Envoy
appends the client's address when Kourier's ``use-remote-address`` is on, and its load
balancer keeps client addresses (externalTrafficPolicy: Local), both set by
infra/install-operators.sh; the activator and the queue-proxy then append the pod addresses
they were called from. With no trusted proxy (a bare ``python -m service``), X-Forwarded-For
is never read. This is the walk of nginx's realip module with ``real_ip_recursive on``.

**A client** is an IPv4 address or an IPv6 /64 (one subscriber: a host picks any address
in its /64 at will); **a network** is an IPv4 /24 or an IPv6 /48 (a site), for the rate
limits (service/ratelimit.py). **The network key** (``NetworkKey``) stored with a correction
is the client's IPv4 /24 or IPv6 /64, hashed with HMAC-SHA256 under a secret
(FEEDBACK_NETWORK_SECRET): triage can tell that corrections came from one network without
the address ever being stored, and without the secret nobody can test a guessed network
against the key (IPv4 has only 2^24 /24s to try).
"""
import hashlib
import hmac
import ipaddress

CLIENT_PREFIX = {4: 32, 6: 64}
NETWORK_PREFIX = {4: 24, 6: 48}
STORED_PREFIX = {4: 24, 6: 64}


def parse(text):
    """An IPv4 or IPv6 address (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def client_address(environ, trusted):
    """The address ``environ``'s request came from (an ip_address, or None when the peer
    has none), believing X-Forwarded-For only as far as ``trusted`` (a list of ip_network)
    vouches for it."""
    address = parse(environ.get("REMOTE_ADDR", ""))
    if address is None or not _within(address, trusted):
        return address
    for entry in reversed(environ.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        hop = parse(entry)
        if hop is None:  # not an address: nothing to its left can be told apart from what a client wrote
            break
        address = hop
        if not _within(hop, trusted):
            break
    return address


def _within(address, networks):
    return any(address in network for network in networks)


def _prefix(address, bits):
    return ipaddress.ip_network((address, bits[address.version]), strict=False)


def client_of(address):
    """The rate limit's client of ``address``: the address itself, or its IPv6 /64."""
    return "?" if address is None else str(_prefix(address, CLIENT_PREFIX))


def network_of(address):
    """The rate limit's network of ``address``: its IPv4 /24 or IPv6 /48."""
    return "?" if address is None else str(_prefix(address, NETWORK_PREFIX))


class NetworkKey:
    """``key(address)``: "v4:<16 hex>" or "v6:<16 hex>", the keyed hash of the address's IPv4
    /24 or IPv6 /64; None without an address."""

    def __init__(self, secret):
        self.secret = secret.encode()

    def __call__(self, address):
        if address is None:
            return None
        network = _prefix(address, STORED_PREFIX)
        digest = hmac.new(self.secret, network.network_address.packed + bytes([network.prefixlen]), hashlib.sha256)
        return f"v{address.version}:{digest.hexdigest()[:16]}"
