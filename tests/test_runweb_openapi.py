"""runweb's OpenAPI document: it validates, names exactly the live routes, and schemathesis
finds no 5xx and no error outside the API's envelope against a real gunicorn runweb + runq."""
import itertools

import falcon.inspect
import falcon.testing
import pytest
import schemathesis
import yaml
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate

import procs
from simx import config
from runweb import openapi
from runweb.app import ROUTES, create_app

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}

IN_PROCESS = lambda address, port, server=None: True   # noqa: E731  (no sockets here: every client is "ours")


def test_the_document_is_valid_openapi():
    validate(openapi.document())


def test_the_document_names_exactly_the_routes_runweb_serves():
    documented = {(path, method.upper()) for path, item in openapi.document()["paths"].items()
                  for method in item if method in METHODS}
    served = {(path, method) for path, _, _, described in ROUTES for method in described}
    assert documented == served


def test_runweb_serves_the_routes_table_and_its_static_files_only(tmp_path):
    """The drift check above holds only if every route is in ROUTES.  The one exception is
    /static/{name}: the dashboard's script, style and icon, versioned with the package and
    fetched by its own pages.  They are not part of the API (no envelope, no YAML or JSON, no
    promise to scripts), so the document leaves them out on purpose."""
    app = create_app(None, config.load(path=tmp_path / "none.yaml", env={}, root=tmp_path))
    served = {(route.path, m.method) for route in falcon.inspect.inspect_routes(app)
              for m in route.methods if not m.internal}
    tabled = {(path, method) for path, _, _, described in ROUTES for method in described}
    assert served - tabled == {("/static/{name}", "GET")} and tabled <= served
    assert not any(path.startswith("/static") for path in openapi.document()["paths"])


def test_every_operation_documents_its_errors():
    for path, item in openapi.document()["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert {"401", "429", "503"} <= codes, (method, path)
            if "{" in path or op.get("parameters") or method == "post":
                assert "400" in codes, (method, path)


def test_the_document_is_served_as_yaml_and_json(tmp_path):
    client = falcon.testing.TestClient(create_app(None, config.load(path=tmp_path / "none.yaml", env={},
                                                                   root=tmp_path), own_user=IN_PROCESS), headers={"Host": "localhost"})
    assert client.simulate_get("/openapi.json").json == openapi.document()
    result = client.simulate_get("/openapi.yaml")
    assert result.status_code == 200 and result.headers["content-type"].startswith("application/yaml")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    runq = procs.start_runq(tmp)
    try:
        port = procs.free_port()
        env = procs.base_env(tmp, runq.port, RUNWEB_PORT=port, RUNWEB_USERS=tmp / "no-users.yaml")
        web = procs.start_runweb(tmp, runq.port, port=port, env=env, workers=2)
        worker = procs.start_worker(tmp, runq.port)
        try:
            # batches 1 (ended: results to stream, runs with attempts) and 2 (waiting: no worker serves it)
            for spec in ({"engine": "dummy", "n_runs": 3, "max_attempts": 1,
                          "param": {"step_count": 1, "step_delay": 0.01, "fail": "boom", "fail_attempts": 1}},
                         {"engine": "calibration", "n_runs": 5,   # declared, but no worker serves it here
                              "param": {"arrival_rate": 500, "target_delay": 20}}):
                assert procs.http("POST", f"{web.url}/batch/new", spec)[0] == 201
            procs.wait_until(lambda: procs.http("GET", f"{web.url}/batch/1?runs=none",
                                                headers={"Accept": "application/json"})[2]["batch"]["end_time"],
                             20, what="batch 1 to end")
            yield web
        finally:
            worker.stop()
            web.stop()
    finally:
        runq.stop()


def errors_in_the_api_format(response):
    """Every 4xx and 5xx: {status: error, message: "..."} (JSON here: the tests ask for it)."""
    if response.status_code >= 400:
        # JSON as asked, except a 414: the server refuses before reading the Accept header
        body = yaml.safe_load(response.text) if response.status_code == 414 else response.json()
        assert body.get("status") == "error" and isinstance(body.get("message"), str) and body["message"], \
            f"{response.status_code} without the API's error body: {response.text[:300]!r}"


def test_schemathesis_finds_no_server_error_and_every_error_has_a_reason(live):
    """Each operation with generated valid and invalid data (hypothesis, a bounded number of
    examples), checked by schemathesis' own checks plus ours.  Driven without schemathesis'
    pytest plugin, which does not load under this pytest."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= sum(len(described) for _, _, _, described in ROUTES) - 1  # less its own URL
    for operation, mode in itertools.product(operations, (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def exchange(case):
            response = case.call(base_url=live.url, headers={"Accept": "application/json"}, timeout=10)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
            errors_in_the_api_format(response)
            excluded = [schemathesis.checks.positive_data_acceptance]  # random engines etc. are fine to refuse
            if response.status_code == 414:  # a refusal too, which that check does not list
                excluded.append(schemathesis.checks.negative_data_rejection)
            case.validate_response(response, excluded_checks=excluded)
        try:
            exchange()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to get wrong in GET /: no parameter, no body
