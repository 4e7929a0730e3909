"""runweb's HTTP surface against a stub runq: envelopes, negotiation, errors, validation, auth, paging."""
import base64

import falcon
import falcon.testing
import pytest
import yaml

from simx import config, protocol
from simx.client import RunqUnavailable
from runweb import auth
from runweb.app import ROUTES, create_app

BATCH = {"id": 7, "name": "test123", "group": "topl", "user": "topl", "engine": "dummy", "n_runs": 3,
         "param": {"step_count": 5, "step_delay": 1}, "state": "active", "n_complete": 0}
REQUEST = b"name: test123\nengine: dummy\ngroup: topl\nuser: topl\nn_runs: 3\nparam:\n  step_count: 5\n"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl --data-binary sends

IN_PROCESS = lambda address, port, server=None: True   # noqa: E731  (no sockets here: every client is "ours")


class StubRunq:
    """Records requests (checked against the protocol, as the real client does) and returns canned Replies."""

    def __init__(self):
        self.requests = []   # (type, fields) without who asks; that is in self.who
        self.who = []        # (actor, admin) of each request that carries them
        self.replies = {"LoginThrottle": protocol.reply(retry_after=None)}

    def request(self, mtype, **fields):
        protocol.message(mtype, **fields)
        if mtype == "LoginThrottle":
            return self.replies[mtype]
        if "admin" in fields:
            self.who.append((fields.pop("actor"), fields.pop("admin")))
        self.requests.append((mtype, fields))
        answer = self.replies.get(mtype, protocol.reply())
        if isinstance(answer, Exception):
            raise answer
        return answer(fields) if callable(answer) else answer


@pytest.fixture
def runq():
    return StubRunq()


@pytest.fixture
def cfg(tmp_path):
    return config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path, runweb_max_body=4096)


@pytest.fixture
def client(runq, cfg):
    return falcon.testing.TestClient(create_app(runq, cfg, own_user=IN_PROCESS), headers={"Host": "localhost"})


def body(result):
    """A YAML reply as data, checking it is YAML."""
    assert result.headers["content-type"] == "application/yaml; charset=utf-8"
    return yaml.safe_load(result.text)


# --- envelope and negotiation -------------------------------------------------------------

def test_index_lists_every_route_and_method_in_yaml_by_default(client):
    result = client.simulate_get("/", headers={"Accept": "*/*"})
    data = body(result)
    assert result.status_code == 200 and data["status"] == "ok"
    listed = {(e["method"], e["path"]) for e in data["endpoints"]}
    assert listed == {(m, path) for path, _, _, described in ROUTES for m in described}
    assert all(e["description"] for e in data["endpoints"])


def test_json_when_the_client_prefers_it(client, runq):
    runq.replies["BatchList"] = protocol.reply(message="2 batches", batches=[BATCH, BATCH])
    result = client.simulate_get("/batch", headers={"Accept": "application/json"})
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"status": "ok", "message": "2 batches", "batches": [BATCH, BATCH]}


# (a client preferring text/html gets the dashboard instead: tests/test_dashboard_pages.py)
@pytest.mark.parametrize("accept", [None, "*/*", "application/yaml", "text/plain,*/*;q=0.8",
                                    "application/json;q=0.5, application/yaml", "text/plain"])
def test_yaml_for_everyone_else(client, accept):
    result = client.simulate_get("/", headers={"Accept": accept} if accept else {})
    assert body(result)["status"] == "ok"
    assert result.headers["vary"] == "Accept"


def test_envelope_drops_runqs_type_and_code_and_keeps_order(client, runq):
    runq.replies["WorkerList"] = protocol.reply(message="1 worker", workers=[{"id": 1, "host": "h"}])
    for path in ("/worker", "/workers"):
        text = client.simulate_get(path).text
        assert list(yaml.safe_load(text)) == ["status", "message", "workers"]
        assert text.startswith("status: ok\nmessage: 1 worker\nworkers:\n")


def test_non_ascii_round_trips_in_yaml_and_json(client, runq):
    runq.replies["StartBatch"] = lambda f: protocol.reply(batch_id=9, created=True, batch={"id": 9, **f})
    request = "name: テスト 東京\nengine: dummy\nuser: Zoë\nn_runs: 1\nparam: {città: Zürich, 名前: 値}\n"
    result = client.simulate_post("/batch/new", body=request.encode("utf-8"), headers=FORM)
    sent = runq.requests[-1][1]
    assert sent["name"] == "テスト 東京" and sent["param"] == {"città": "Zürich", "名前": "値"}
    assert "テスト 東京" in result.text and "Zürich" in result.text  # unescaped UTF-8, not \u escapes
    assert body(result)["batch"]["param"] == {"città": "Zürich", "名前": "値"}
    result = client.simulate_post("/batch/new", body=request.encode("utf-8"), headers={"Accept": "application/json"})
    assert "テスト 東京" in result.text and result.json["batch"]["user"] == "Zoë"


def test_user_name_in_path_is_decoded(client, runq):
    runq.replies["UserStatus"] = protocol.reply(batches=[])
    assert client.simulate_get("/user/%E7%94%B0%E4%B8%AD").status_code == 200
    assert client.simulate_get("/user/topl/").status_code == 200  # trailing slash tolerated
    page = {"offset": 0, "limit": 1000}
    assert runq.requests == [("UserStatus", {"user": "田中", **page}), ("UserStatus", {"user": "topl", **page})]


# --- errors -------------------------------------------------------------------------------

def test_unknown_path_is_404_in_the_envelope(client, runq):
    result = client.simulate_get("/nothing/here")
    assert result.status_code == 404
    assert body(result) == {"status": "error", "message": "no such endpoint: /nothing/here (GET / lists them)"}
    assert runq.requests == []


def test_wrong_method_is_405_in_the_envelope(client):
    result = client.simulate_delete("/batch/3")
    assert result.status_code == 405 and "GET" in result.headers["allow"]
    assert body(result)["status"] == "error"
    assert body(result)["message"].startswith("DELETE is not allowed on /batch/3")
    assert client.simulate_get("/batch/new").status_code == 405
    assert client.simulate_post("/batch").status_code == 405


def test_runq_error_reply_becomes_its_code(client, runq):
    runq.replies["BatchStatus"] = protocol.reply(status="error", code=404, message="no batch 99")
    result = client.simulate_get("/batch/99")
    assert result.status_code == 404
    assert body(result) == {"status": "error", "message": "no batch 99"}
    runq.replies["DrainWorker"] = protocol.reply(status="error", code=409, message="worker 3 is disconnected")
    result = client.simulate_post("/worker/3/drain", headers={"Accept": "application/json"})
    assert result.status_code == 409 and result.json == {"status": "error", "message": "worker 3 is disconnected"}


def test_a_quota_refusal_is_429_naming_it_without_retry_after(client, runq):
    """Waiting does not lift a quota (unlike a login throttle): no Retry-After, so clients do not retry."""
    message = "quota waiting_runs: 1,000,000 waiting runs at most; ann has 999,990 and asks for 100"
    runq.replies["StartBatch"] = protocol.reply(status="error", code=429, message=message)
    result = client.simulate_post("/batch/new", body="engine: dummy\nn_runs: 100\n",
                                  headers={"Accept": "application/json"})
    assert result.status_code == 429 and result.json == {"status": "error", "message": message}
    assert "retry-after" not in result.headers


def test_runq_unreachable_is_503_with_a_message(client, runq):
    runq.replies["BatchList"] = RunqUnavailable("cannot reach runq at 127.0.0.1:1: refused")
    result = client.simulate_get("/batches")
    assert result.status_code == 503 and result.headers["retry-after"] == "5"
    assert body(result) == {"status": "error",
                            "message": "runq is unavailable: cannot reach runq at 127.0.0.1:1: refused"}


def test_runq_garbage_is_502(client, runq):
    runq.replies["WorkerList"] = protocol.ProtocolError("frame is not UTF-8 JSON")
    result = client.simulate_get("/worker")
    assert result.status_code == 502 and "bad exchange with runq" in body(result)["message"]


def test_a_bug_is_500_in_the_envelope(client, runq):
    runq.replies["WorkerList"] = RuntimeError("a bug")
    result = client.simulate_get("/worker")
    assert result.status_code == 500
    assert body(result) == {"status": "error", "message": "500 Internal Server Error"}


def test_health(client, runq):
    runq.replies["Ping"] = protocol.reply(runq={"version": "0.1.0", "workers_connected": 2, "batches_active": 1})
    result = client.simulate_get("/health")
    assert result.status_code == 200
    assert body(result) == {"status": "ok", "message": "ok",
                            "runq": {"version": "0.1.0", "workers_connected": 2, "batches_active": 1}}
    runq.replies["Ping"] = RunqUnavailable("cannot reach runq")
    assert client.simulate_get("/health").status_code == 503
    runq.replies["Ping"] = protocol.reply(status="error", code=400, message="huh")
    result = client.simulate_get("/health")
    assert result.status_code == 503 and "huh" in body(result)["message"]
    runq.replies["Ping"] = protocol.ProtocolError("frame is not UTF-8 JSON")
    assert client.simulate_get("/health").status_code == 503


# --- batches, runs, workers ----------------------------------------------------------------

def test_batch_page_defaults_and_passes_next_offset_through(client, runq):
    runq.replies["BatchStatus"] = lambda f: protocol.reply(batch=BATCH, runs=[], next_offset=f["offset"] + 1000, **f)
    data = body(client.simulate_get("/batch/7"))
    assert runq.requests[-1] == ("BatchStatus", {"batch_id": 7, "offset": 0, "limit": 1000, "if_page": ""})
    assert data["next_offset"] == 1000 and data["batch"] == BATCH and data["runs"] == []
    client.simulate_get("/batch/7", params={"offset": "2000", "limit": "10000"})
    assert runq.requests[-1] == ("BatchStatus", {"batch_id": 7, "offset": 2000, "limit": 10000, "if_page": ""})


@pytest.mark.parametrize("path, query, message", [
    ("/batch/abc", "", "parameter 'batch_id' must be an integer >= 0, not 'abc'"),
    ("/batch/-1", "", "parameter 'batch_id' must be an integer"),
    ("/batch/1.0", "", "parameter 'batch_id'"),
    ("/batch/%D9%A1", "", "parameter 'batch_id'"),  # an Arabic-Indic digit: int() would take it
    ("/batch/99999999999999999999", "", "parameter 'batch_id'"),
    ("/batch/" + "9" * 5000, "", "parameter 'batch_id'"),  # more digits than int() takes
    ("/batch/1", "offset=-5", "parameter 'offset' must be an integer >= 0, not '-5'"),
    ("/batch/1", "offset=x", "parameter 'offset'"),
    ("/batch", "limit=0", "parameter 'limit' must be an integer from 1 to 10000, not '0'"),
    ("/batch/1", "limit=-1", "parameter 'limit' must be an integer from 0 to 10000"),
    ("/batch/1", "state=done", "parameter 'state' must be one of waiting, running"),
    ("/batch/1", "runs=some", "parameter 'runs' must be one of all, none"),
    ("/batch/1", "limit=10001", "parameter 'limit' must be an integer from 0 to 10000"),
    ("/batch/1", "limit=1&limit=2", "parameter 'limit' is given more than once"),
    ("/batch/1/run/x", "", "parameter 'batch_index' must be an integer"),
    ("/batch/y/run/1", "", "parameter 'batch_id'"),
    ("/worker/z/drain", "", "parameter 'worker_id'"),
])
def test_bad_ids_and_paging_are_400_naming_the_parameter(client, runq, path, query, message):
    method = "POST" if path.endswith("drain") else "GET"
    result = client.simulate_request(method, path, query_string=query)
    assert result.status_code == 400
    assert message in body(result)["message"]
    assert runq.requests == []


def test_run_status_and_cancels(client, runq):
    run = {"batch_id": 7, "batch_index": 2, "state": "cancelled", "attempts": []}
    runq.replies["RunStatus"] = protocol.reply(run=run)
    runq.replies["CancelRun"] = protocol.reply(message="run cancelled", run=run, batch=BATCH)
    runq.replies["CancelBatch"] = protocol.reply(message="batch cancelled", batch=BATCH)
    runq.replies["DrainWorker"] = protocol.reply(worker={"id": 4, "state": "draining"})
    assert body(client.simulate_get("/batch/7/run/2"))["run"] == run
    assert body(client.simulate_post("/batch/7/run/2/cancel")) == {
        "status": "ok", "message": "run cancelled", "run": run, "batch": BATCH}
    result = client.simulate_post("/batch/7/cancel")
    assert result.status_code == 200 and body(result)["batch"] == BATCH
    assert body(client.simulate_post("/worker/4/drain"))["worker"]["state"] == "draining"
    assert runq.requests == [("RunStatus", {"batch_id": 7, "batch_index": 2}),
                             ("CancelRun", {"batch_id": 7, "batch_index": 2}),
                             ("CancelBatch", {"batch_id": 7}), ("DrainWorker", {"worker_id": 4})]


# --- POST /batch/new ---------------------------------------------------------------------

def test_new_batch_is_201_with_location(client, runq):
    runq.replies["StartBatch"] = protocol.reply(message="batch 7 started", batch_id=7, created=True, batch=BATCH)
    result = client.simulate_post("/batch/new", body=REQUEST, headers=FORM)
    assert result.status_code == 201 and result.headers["location"] == "/batch/7"
    assert body(result) == {"status": "ok", "message": "batch 7 started", "batch_id": 7, "created": True,
                            "batch": BATCH}
    assert runq.requests == [("StartBatch", {"name": "test123", "group": "topl", "user": "topl", "engine": "dummy",
                                             "n_runs": 3, "param": {"step_count": 5}})]


def test_chunked_body_within_the_limit_is_read(client, runq):
    runq.replies["StartBatch"] = protocol.reply(batch_id=7, created=True, batch=BATCH)
    result = client.simulate_post("/batch/new", body=REQUEST, extras={"CONTENT_LENGTH": "", "wsgi.input_terminated": True})
    assert result.status_code == 201 and runq.requests[-1][1]["n_runs"] == 3


def test_idempotency_key_header_is_sent_and_a_repeat_is_200(client, runq):
    runq.replies["StartBatch"] = protocol.reply(batch_id=7, created=False, batch=BATCH)
    result = client.simulate_post("/batch/new", body=REQUEST, headers={"Idempotency-Key": "abc-1"})
    assert result.status_code == 200 and body(result)["batch_id"] == 7 and "location" not in result.headers
    assert runq.requests[-1][1]["idempotency_key"] == "abc-1"
    result = client.simulate_post("/batch/new", body=REQUEST + b"idempotency_key: other\n",
                                  headers={"Idempotency-Key": "abc-1"})
    assert result.status_code == 400 and "differ" in body(result)["message"]


def test_utf8_idempotency_header_arrives_as_text(client, runq):
    runq.replies["StartBatch"] = protocol.reply(batch_id=7, created=True, batch=BATCH)
    header = "ключ".encode("utf-8").decode("latin-1")  # how WSGI hands over raw UTF-8 header bytes
    client.simulate_post("/batch/new", body=REQUEST, headers={"Idempotency-Key": header})
    assert runq.requests[-1][1]["idempotency_key"] == "ключ"


@pytest.mark.parametrize("request_body, message", [
    (b"engine: dummy\n", "field 'n_runs' is required"),
    (b"n_runs: 2\n", "field 'engine' is required"),
    (b"engine: dummy\nn_runs: 0\n", "field 'n_runs' must be at least 1"),
    (b"engine: dummy\nn_runs: 2\nwidth: 3\n", "unknown field 'width'"),
    (b"engine: dummy\nn_runs: [\n", "malformed YAML: line 3, column 1"),
    (b"\xc3\x28", "malformed YAML: not UTF-8"),
    (b"- a\n- b\n", "must be a YAML mapping"),
    (b"", "the request body is empty"),
    (b"engine: dummy\nn_runs: 2\ntime_limit: -1\n", "field 'time_limit'"),
    (b"engine: dummy\nn_runs: 2\nparam: [1]\n", "field 'param' must be a mapping"),
])
def test_bad_batch_requests_are_400_naming_the_field(client, runq, request_body, message):
    result = client.simulate_post("/batch/new", body=request_body, headers=FORM)
    assert result.status_code == 400
    assert message in body(result)["message"]
    assert runq.requests == []


def test_body_over_max_body_is_413(client, runq):
    big = REQUEST + b"name: " + b"x" * 5000 + b"\n"
    result = client.simulate_post("/batch/new", body=big)
    assert result.status_code == 413
    assert body(result)["message"] == "request body is larger than the 4096-byte limit (runweb.max_body)"
    # a chunked upload has no Content-Length: the body is read, but no further than the limit
    chunked = {"CONTENT_LENGTH": "", "wsgi.input_terminated": True}
    result = client.simulate_post("/batch/new", body=big, extras=chunked)
    assert result.status_code == 413
    assert runq.requests == []


# --- auth --------------------------------------------------------------------------------

def basic(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def users_file(cfg):
    path = config.resolve_path(cfg.runweb.users_file, cfg.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"relteq": auth.hash_password("topl5678"),
                                    "zoë": auth.hash_password("pässwörd")}, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_needs_no_password(client, addr):
    assert client.simulate_get("/", remote_addr=addr).status_code == 200


def test_remote_without_users_configured_is_401(client, runq):
    result = client.simulate_get("/batch", remote_addr="203.0.113.7")
    assert result.status_code == 401
    assert result.headers["www-authenticate"] == 'Basic realm="simx"'
    assert body(result)["status"] == "error"
    assert client.simulate_get("/batch", remote_addr="203.0.113.7", headers=basic("relteq", "x")).status_code == 401
    assert runq.requests == []


def test_remote_with_the_right_password_passes(client, runq, users_file):
    runq.replies["BatchList"] = protocol.reply(batches=[])
    for _ in range(2):  # the second time from the cache of good logins
        result = client.simulate_get("/batch", remote_addr="203.0.113.7", headers=basic("relteq", "topl5678"))
        assert result.status_code == 200
    assert client.simulate_get("/batch", remote_addr="2001:db8::5", headers=basic("zoë", "pässwörd")).status_code == 200
    assert len(runq.requests) == 3


@pytest.mark.parametrize("headers", [
    {},
    basic("relteq", "wrong"),
    basic("relteq", "topl5678 "),
    basic("nobody", "topl5678"),
    {"Authorization": "Bearer abc"},
    {"Authorization": "Basic !!!notbase64"},
    {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
])
def test_remote_with_a_wrong_or_missing_password_is_401(client, runq, users_file, headers):
    result = client.simulate_get("/batch", remote_addr="203.0.113.7", headers=headers)
    assert result.status_code == 401 and result.headers["www-authenticate"] == 'Basic realm="simx"'
    assert runq.requests == []


def test_x_forwarded_for_is_not_trusted(client, cfg):
    headers = {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
    assert client.simulate_get("/", remote_addr="203.0.113.7", headers=headers).status_code == 401


def test_trusted_networks_come_from_config(runq, tmp_path):
    cfg = config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path, runweb_trusted=["203.0.113.0/24"])
    client = falcon.testing.TestClient(create_app(runq, cfg, own_user=IN_PROCESS), headers={"Host": "localhost"})
    assert client.simulate_get("/", remote_addr="203.0.113.7").status_code == 200
    assert client.simulate_get("/", remote_addr="127.0.0.1").status_code == 401
    with pytest.raises(config.ConfigError, match="runweb.trusted"):
        create_app(runq, config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path, runweb_trusted=["x/8"]))


def test_listings_are_paged_and_one_worker_can_be_asked_for(client, runq):
    runq.replies["BatchList"] = protocol.reply(batches=[], offset=5, limit=2, next_offset=7)
    runq.replies["WorkerList"] = protocol.reply(workers=[], offset=0, limit=1000, next_offset=None)
    runq.replies["WorkerStatus"] = protocol.reply(worker={"id": 3, "state": "idle"})
    assert client.simulate_get("/batches", params={"offset": "5", "limit": "2"}).status_code == 200
    assert client.simulate_get("/workers").status_code == 200
    result = client.simulate_get("/worker/3", headers={"Accept": "application/json"})
    assert result.status_code == 200 and result.json["worker"]["state"] == "idle"
    assert runq.requests == [("BatchList", {"offset": 5, "limit": 2}), ("WorkerList", {"offset": 0, "limit": 1000}),
                             ("WorkerStatus", {"worker_id": 3})]
    assert client.simulate_get("/workers", params={"limit": "0"}).status_code == 400


@pytest.mark.parametrize("host, status", [
    ("evil.example:8097", 421), ("127.0.0.1.evil.example", 421), ("localhost:8097", 200), ("127.0.0.1", 200),
    ("[::1]:8097", 200), ("LOCALHOST", 200), ("sim.lab.example", 200), ("a.b.lab.example", 200), ("lab.example", 421),
    ("127.0.0.2:8097", 200), ("192.0.2.7:8097", 421), ("[2001:db8::1]", 421),   # an address of ours (a balancer's check)
])
def test_only_the_host_names_runweb_serves_are_answered(tmp_path, host, status):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 is refused by its Host header,
    before authentication or loopback trust, on every route."""
    cfg = config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path, runweb_hosts=["sim.lab.example", "*.b.lab.example"])
    client = falcon.testing.TestClient(create_app(StubRunq(), cfg, own_user=IN_PROCESS))
    for path in ("/batch", "/worker", "/", "/health"):
        r = client.simulate_get(path, headers={"Host": host, "Accept": "application/json"})
        assert r.status_code == status, (path, host, r.status_code)
        if status == 421:
            assert r.json["status"] == "error" and "does not serve the host name" in r.json["message"]
    r = client.simulate_post("/worker/1/drain", headers={"Host": host, "Origin": f"http://{host}"})
    assert (r.status_code == 421) == (status == 421)


def test_a_foreign_host_is_refused_on_every_route_and_method_before_runq_is_asked(runq, cfg):
    """Every row of ROUTES, each method it serves (and one it does not), the dashboard's static
    files and an unknown path: 421 in the envelope, and runq hears nothing of it."""
    import re
    client = falcon.testing.TestClient(create_app(runq, cfg, own_user=IN_PROCESS))
    evil = {"Host": "evil.example:8097", "Origin": "http://evil.example:8097", "Accept": "application/json"}
    tried = []
    for path, _, _, described in ROUTES:
        concrete = re.sub(r"\{[a-z_]+\}", "1", path)
        for method in (*described, "DELETE"):
            tried.append((method, concrete))
    tried += [("GET", "/static/dash.js"), ("GET", "/no/such/thing")]
    for method, path in tried:
        r = client.simulate_request(method, path, headers=evil, body=REQUEST if method == "POST" else None)
        assert r.status_code == 421, (method, path, r.status_code)
        assert r.json["status"] == "error" and "does not serve the host name 'evil.example:8097'" in r.json["message"]
    assert len(tried) > len(ROUTES) and runq.requests == [] and runq.who == []
