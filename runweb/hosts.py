"""Answer only the host names runweb serves (DNS rebinding).

A web page on attacker.example whose name the attacker's DNS turns into 127.0.0.1 is
same-origin with runweb for the browser, and its requests come from loopback, which runweb
trusts.  What gives it away is the ``Host`` header: runweb refuses every request whose Host
is not one of its names (``runweb.hosts``, plus localhost, 127.0.0.1, ::1, the bound address
and this machine's names) with 421, before authentication or trust is considered.  A
request without Host (HTTP/1.0) is taken as for the bound address, and so is a Host that is
an IP address of this machine (the kernel says: a socket binds to it), as a load balancer's
liveness check sends: no rebinding makes a page's origin an address of ours.  A name in
``runweb.hosts`` may be ``*.example.org`` (any name under it) or ``*`` (any: for an operator
who checks Host in a proxy in front).
"""
from __future__ import annotations

import ipaddress
import socket

from .errors import MisdirectedHost

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def host_name(header: str) -> str:
    """The name in a Host header, lower case, without the port (and [brackets] of IPv6)."""
    text = header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def served_names(configured=(), bind: str = "") -> tuple[frozenset, tuple]:
    """(exact names, wildcard suffixes) runweb answers to."""
    names = {n.lower() for n in DEFAULT_NAMES}
    if bind and bind not in ("0.0.0.0", "::"):
        names.add(bind.lower())
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    suffixes = []
    for name in configured:
        name = name.strip().lower()
        if name == "*":
            suffixes.append("")
        elif name.startswith("*."):
            suffixes.append(name[1:])
        elif name:
            names.add(host_name(name))
    return frozenset(names), tuple(suffixes)


def is_local_address(name: str) -> bool:
    """Whether `name` is an IP address of this machine: a socket can bind to it."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    try:
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
        return True
    except OSError:
        return False


class KnownHosts:
    """Middleware: 421 for a Host runweb does not serve."""

    MAX_ADDRESSES = 256   # IP addresses in Host headers remembered (local or not)

    def __init__(self, configured=(), bind: str = ""):
        self.names, self.suffixes = served_names(configured, bind)
        self.addresses: dict[str, bool] = {}

    def serves(self, header: str | None) -> bool:
        if header is None or not header.strip():
            return True
        name = host_name(header)
        if name in self.names or any(name.endswith(s) for s in self.suffixes):
            return True
        local = self.addresses.get(name)
        if local is None:
            local = is_local_address(name)
            if len(self.addresses) < self.MAX_ADDRESSES:
                self.addresses[name] = local
        return local

    def process_request(self, req, resp) -> None:
        header = req.get_header("Host")
        if not self.serves(header):
            raise MisdirectedHost(f"runweb does not serve the host name {header[:100]!r}: it answers "
                                  "only its own names (add a name to runweb.hosts in conf/simx.yaml)")
