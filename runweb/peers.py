"""Which local account a loopback client is: the kernel knows who owns each TCP socket.

runweb trusts requests from loopback without a password (the operator's curl on their own
machine), but every account on the host can reach loopback.  So loopback trust goes only to
a client whose socket belongs to runweb's own Unix user.  The kernel is asked for the owner
of the client's socket, found by its four addresses (its end and runweb's): one sock_diag
netlink request (what ``ss`` uses), a lookup in the kernel's socket table, a few µs however
many sockets the host has.  Without netlink (or runweb's end unknown) the owner is looked up
in /proc/net/tcp(6), a scan of every socket.  A client runweb cannot place is not trusted
and must authenticate.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF
ALL_STATES = 0xFFFFFFFF
HEADER = struct.Struct("=IHHII")              # nlmsghdr: len, type, flags, seq, pid
REQUEST = struct.Struct("=BBBxI")             # inet_diag_req_v2: family, protocol, ext, states
SOCKID = struct.Struct(">HH16s16s")           # inet_diag_sockid: sport, dport, src, dst (then if, cookie)
SOCKID_TAIL = struct.Struct("=III")           # if, cookie[2]
UID_AT = HEADER.size + 4 + 48 + 12            # inet_diag_msg: family..retrans, sockid, expires..wqueue, uid


def _plain(address: str):
    """An address as the client's socket has it: an IPv4-mapped IPv6 one is IPv4."""
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


def _packed(ip) -> bytes:
    return ip.packed.ljust(16, b"\0")


def diag_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket whose own end is `client` and far end `server`
    (netlink sock_diag), or None if there is none or netlink cannot tell."""
    try:
        src, dst = _plain(client[0]), _plain(server[0])
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    family = socket.AF_INET if src.version == 4 else socket.AF_INET6
    body = (REQUEST.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES)
            + SOCKID.pack(int(client[1]), int(server[1]), _packed(src), _packed(dst))
            + SOCKID_TAIL.pack(0, NO_COOKIE, NO_COOKIE))
    message = HEADER.pack(HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + body
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(message)
            reply = nl.recv(65536)
    except (OSError, AttributeError):
        return None
    if len(reply) < HEADER.size:
        return None
    _, kind, _, _, _ = HEADER.unpack_from(reply)
    if kind != SOCK_DIAG_BY_FAMILY or len(reply) < UID_AT + 4:
        return None    # NLMSG_ERROR: no such socket (ENOENT), or the kernel has no sock_diag
    return struct.unpack_from("=I", reply, UID_AT)[0]


def _proc_address(text: str) -> tuple[str, int]:
    """/proc/net/tcp's hex address:port (host byte order words) -> (address, port)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, struct.pack("<I", struct.unpack(">I", raw)[0]))
    else:
        words = struct.unpack(">4I", raw)
        addr = socket.inet_ntop(socket.AF_INET6, struct.pack("<4I", *words))
    return addr, int(port, 16)


def _same(a: str, b: str) -> bool:
    try:
        return _plain(a) == _plain(b)
    except ValueError:
        return False


def proc_owner(address: str, port: int, tables=("/proc/net/tcp", "/proc/net/tcp6")) -> int | None:
    """The uid owning the TCP socket whose local end is (address, port), from /proc, or None."""
    suffix = f":{int(port):04X}"
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 8 or not fields[1].endswith(suffix):
                continue
            try:
                local = _proc_address(fields[1])
            except (ValueError, OSError):
                continue
            if local[1] == port and _same(local[0], address):
                return int(fields[7])
    return None


def socket_owner(address: str, port: int, server: tuple[str, int] | None = None) -> int | None:
    """The uid owning the client socket at (address, port) that is connected to `server`."""
    if server is not None:
        uid = diag_owner((address, port), server)
        if uid is not None:
            return uid
    return proc_owner(address, port)


def is_own_user(address: str | None, port, server: tuple[str, int] | None = None) -> bool:
    """Whether the client at (address, port), on this host, runs as runweb's own user;
    `server` is runweb's end of that connection, when known."""
    try:
        port = int(port)
    except (TypeError, ValueError):
        return False
    return address is not None and socket_owner(address, port, server) == os.getuid()
