"""runweb/peers.py against the kernel: who owns a loopback client's socket, by netlink and by /proc."""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

import pytest

from runweb import peers


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv


def _accepted(srv):
    conn, (address, port) = srv.accept()
    return conn, address, port


def test_our_own_client_is_ours_by_netlink_and_by_proc(listener):
    with socket.create_connection(listener.getsockname()) as client:
        conn, address, port = _accepted(listener)
        with conn:
            server = conn.getsockname()
            assert client.getsockname() == (address, port)
            assert peers.diag_owner((address, port), server) == os.getuid()
            assert peers.proc_owner(address, port) == os.getuid()
            assert peers.is_own_user(address, port, server)
            assert peers.is_own_user(address, port)        # runweb's end unknown: /proc


def test_no_such_socket_is_nobodys(listener):
    host, port = listener.getsockname()
    with socket.create_connection((host, port)) as client:
        conn, address, cport = _accepted(listener)
        conn.close()
    client_port = cport
    # the four addresses name no socket: runweb's end is another port
    assert peers.diag_owner((address, client_port), (host, port + 1 if port < 65535 else port - 1)) is None
    assert not peers.is_own_user(None, client_port)
    assert not peers.is_own_user(address, "junk")
    assert peers.diag_owner(("not an address", 1), (host, port)) is None


def test_ipv4_mapped_server_end_finds_the_ipv4_client(listener):
    with socket.create_connection(listener.getsockname()) as client:
        conn, address, port = _accepted(listener)
        with conn:
            host, sport = conn.getsockname()
            assert peers.diag_owner(("::ffff:" + address, port), ("::ffff:" + host, sport)) == os.getuid()


def test_another_accounts_client_is_not_ours(listener):
    nobody = pwd.getpwnam("nobody")
    host, port = listener.getsockname()
    code = ("import socket,sys,time; s=socket.create_connection((sys.argv[1], int(sys.argv[2])));"
            "sys.stdout.write('up\\n'); sys.stdout.flush(); sys.stdin.read()")
    child = subprocess.Popen(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                              sys.executable, "-c", code, host, str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"
        conn, address, cport = _accepted(listener)
        with conn:
            server = conn.getsockname()
            assert peers.diag_owner((address, cport), server) == nobody.pw_uid
            assert peers.proc_owner(address, cport) == nobody.pw_uid
            assert not peers.is_own_user(address, cport, server)
    finally:
        child.stdin.close()
        child.wait(timeout=10)
