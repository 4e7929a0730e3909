"""Which local account a loopback client is: the kernel knows who owns each TCP socket.

runweb trusts requests from loopback without a password (the operator's curl on their own
machine), but every account on the host can reach loopback.  So loopback trust goes only to
a client whose socket belongs to runweb's own Unix user: its connection's far end (address
and port) is a socket in /proc/net/tcp (tcp6) whose owner's uid is there.  Another account
is not trusted and must authenticate; so is a client runweb cannot place (no /proc).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct


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
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    x = x.ipv4_mapped or x if x.version == 6 else x
    y = y.ipv4_mapped or y if y.version == 6 else y
    return x == y


def socket_owner(address: str, port: int, tables=("/proc/net/tcp", "/proc/net/tcp6")) -> int | None:
    """The uid owning the TCP socket whose local end is (address, port), or None if not found."""
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 8:
                continue
            try:
                local = _proc_address(fields[1])
            except (ValueError, OSError):
                continue
            if local[1] == port and _same(local[0], address):
                return int(fields[7])
    return None


def is_own_user(address: str | None, port) -> bool:
    """Whether the client at (address, port), on this host, runs as runweb's own user."""
    try:
        port = int(port)
    except (TypeError, ValueError):
        return False
    return address is not None and socket_owner(address, port) == os.getuid()
