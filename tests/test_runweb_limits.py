"""runweb's bounds, against a real gunicorn runweb and runq: slow sockets, YAML bombs, caps,
pages bounded by size, one error format for everything (414 and HEAD included), cross-site POSTs."""
import http.client
import socket
import time
from pathlib import Path

import pytest

import procs

BASE = b"name: t\nengine: dummy\nn_runs: 1\n"


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    runq = procs.start_runq(tmp)
    try:
        port = procs.free_port()
        env = procs.base_env(tmp, runq.port, RUNWEB_PORT=port, RUNWEB_IO_TIMEOUT=1,
                             RUNWEB_USERS=tmp / "no-users.yaml")
        web = procs.start_runweb(tmp, runq.port, port=port, env=env, workers=1)
        web.tmp = tmp
        try:
            yield web
        finally:
            web.stop()
    finally:
        runq.stop()


def raw(port, data: bytes, timeout=5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the socket listening on 127.0.0.1:`port`
    (the rx_queue column of a LISTEN row in /proc/net/tcp)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def test_slow_sockets_do_not_stall_other_clients(web):
    slow = []
    try:
        for _ in range(4):  # more than gunicorn's sync workers could bear: one process here
            s = socket.create_connection(("127.0.0.1", web.port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(s)
        # the hanging sockets have been accepted by runweb (its listen queue is empty), so the
        # requests below really come after them
        procs.wait_until(lambda: accept_queue(web.port) == 0, 5, what="runweb to accept the slow sockets")
        for _ in range(5):
            t0 = time.monotonic()
            assert procs.http("GET", f"{web.url}/health", timeout=5)[0] == 200
            assert time.monotonic() - t0 < 1.0
        # runweb.io_timeout (1 s here) closes a socket that makes no progress, without stalling others
        for s in slow:
            s.settimeout(10)
        t0 = time.monotonic()
        assert [s.recv(100) for s in slow] == [b""] * len(slow) and time.monotonic() - t0 < 4
        assert procs.http("GET", f"{web.url}/health", timeout=1)[0] == 200
    finally:
        for s in slow:
            s.close()


def peak_rss_kb(master_pid: int) -> int:
    """Peak resident memory of the gunicorn worker processes (children of the master)."""
    peak = 0
    for child in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split():
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak


def test_chained_merge_keys_are_refused_fast_and_small(web):
    lines = ["a0: &a0 {k0: 0}"] + [f"a{i}: &a{i} {{<<: *a{i - 1}, k{i}: {i}}}" for i in range(1, 10500)]
    body = BASE + b"param:\n" + "".join(f"  {line}\n" for line in lines).encode()
    assert len(body) > 400_000
    before = peak_rss_kb(web.pid)
    t0 = time.monotonic()
    status, _, reply = procs.http("POST", f"{web.url}/batch/new", body)
    elapsed = time.monotonic() - t0
    assert status == 400 and "more than 100000 nodes" in reply["message"]
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert peak_rss_kb(web.pid) - before < 100_000, "the worker's memory grew by more than 100 MB"


@pytest.mark.parametrize("value", ["0x10", "1:30", "1_000", "0o17", "017"])
def test_integers_must_be_plain_decimal(web, value):
    status, _, reply = procs.http("POST", f"{web.url}/batch/new", f"engine: dummy\nn_runs: {value}\n")
    assert status == 400 and reply["message"].startswith(f"field 'n_runs' must be an integer, not '{value}'")


@pytest.mark.parametrize("name, problem", [
    ('"a\\0b"', "a control character (U+0000)"),
    ('"\\u202Eevil"', "a bidirectional-text control (U+202E)"),
    ('"\\ud800"', "invalid Unicode character escape"),
])
def test_names_must_be_plain_text(web, name, problem):
    status, _, reply = procs.http("POST", f"{web.url}/batch/new", BASE + f"user: {name}\n".encode())
    assert status == 400 and problem in reply["message"]


@pytest.mark.parametrize("path", ["/user/a%00b", "/user/%ED%A0%80", "/user/%E2%80%AEx"])
def test_odd_user_names_in_the_path_are_400_not_500(web, path):
    status, _, reply = procs.http("GET", f"{web.url}{path}")
    assert status < 500 and isinstance(reply, dict), reply  # invalid UTF-8 is decoded with U+FFFD
    assert status == 200 or reply["status"] == "error"


def test_a_param_over_1_mib_is_refused_naming_it(web):
    chunk = "x" * 300_000
    body = BASE + f"param:\n  a: &s {chunk}\n  b: *s\n  c: *s\n  d: *s\n".encode()
    status, _, reply = procs.http("POST", f"{web.url}/batch/new", body)
    assert status == 400 and "field 'param'" in reply["message"] and "1048576-byte limit" in reply["message"]


def test_large_params_never_break_a_listing_it_pages_instead(web):
    big = "y" * 400_000
    ids = []
    for i in range(3):
        status, _, reply = procs.http("POST", f"{web.url}/batch/new", BASE + f"param: {{blob{i}: {big}}}\n".encode())
        assert status == 201, reply
        ids.append(reply["batch_id"])
    seen, offset, pages = [], 0, 0
    while offset is not None:
        status, _, page = procs.http("GET", f"{web.url}/batch?offset={offset}",
                                     headers={"Accept": "application/json"})
        assert status == 200 and page["batches"], page.get("message")
        seen += [b["id"] for b in page["batches"] if "param" in b and b["id"] in ids]
        offset, pages = page["next_offset"], pages + 1
    assert seen == ids and pages >= 2
    assert procs.http("GET", f"{web.url}/batch/{ids[0]}")[0] == 200


def test_a_long_url_gets_414_in_the_api_format(web):
    status, headers, reply = procs.http("GET", f"{web.url}/batch?x={'a' * 5000}")
    assert status == 414 and headers["content-type"].startswith("application/yaml")
    assert reply["status"] == "error" and "too long" in reply["message"]
    # headers are not read past a request line that long, so Accept cannot be honoured: YAML
    status, headers, reply = procs.http("GET", f"{web.url}/batch?x={'a' * 5000}",
                                        headers={"Accept": "application/json"})
    assert status == 414 and reply["status"] == "error"


def test_a_malformed_request_gets_400_in_the_api_format(web):
    reply = raw(web.port, b"GET /batch HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400") and b"status: error" in reply


def test_too_many_headers_get_431_in_the_api_format(web):
    headers = "".join(f"X-H{i}: v\r\n" for i in range(200)).encode()
    reply = raw(web.port, b"GET /batch HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431") and b"status: error" in reply and b"headers are too large" in reply


def test_head_answers_like_get_without_a_body(web):
    for path, code in [("/batch", 200), ("/batch/999", 404), ("/nowhere", 404)]:
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
        conn.request("HEAD", path)
        resp = conn.getresponse()
        assert resp.status == code and resp.read() == b""
        assert resp.headers["Content-Type"] == "application/yaml; charset=utf-8"
        assert int(resp.headers["Content-Length"]) > 0  # the length GET would send
        conn.close()


@pytest.mark.parametrize("headers, status", [
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
    ({"Origin": "ORIGIN"}, 201),           # this server's own origin
    ({"Sec-Fetch-Site": "same-origin"}, 201),
    ({}, 201),                             # curl sends neither
])
def test_a_post_from_another_site_is_refused(web, headers, status):
    headers = {k: v.replace("ORIGIN", web.url) for k, v in headers.items()}
    got, _, reply = procs.http("POST", f"{web.url}/batch/new", BASE, headers=headers)
    assert got == status, reply
    if status == 403:
        assert reply["status"] == "error" and "another site" in reply["message"]
    assert procs.http("GET", f"{web.url}/batch", headers=headers)[0] == 200  # reading is not refused
