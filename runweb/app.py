"""The runweb WSGI app: routes, middleware, and the one place errors become HTTP statuses.

``create_app(client, config)`` takes a runq client (anything with
``request(mtype, **fields) -> Reply dict``) and a ``runq.config.Config``;
``get_app()`` is gunicorn's factory: ``gunicorn 'runweb.app:get_app()'``.
Every reply, errors included, is the envelope ``{status, message, ...}``.
"""
from __future__ import annotations

import falcon

from simx import config as simx_config
from simx.client import RunqClient, RunqUnavailable
from simx.protocol import ProtocolError

from . import auth, dashboard, hosts, media, metrics, openapi, origin, request_metrics, resources
from .page_cache import PageCache
from .errors import (BodyTooLarge, CrossSite, MisdirectedHost, InvalidRequest, NotAuthenticated, RequestTimeout, ErrorReply,
                     TooManyLogins)

RUNQ_TIMEOUT = 20.0  # seconds; under gunicorn's 30 s worker timeout, so a stuck runq gives a 503

PAGED = f" (?offset=0&limit={resources.DEFAULT_LIMIT}; next_offset is null on the last page)"
# path, resource, responder suffix, {method: description}.  GET / is built from this table.
ROUTES = (
    ("/", "index", None, {"GET": "this list of endpoints"}),
    ("/openapi.yaml", "openapi", None, {"GET": "this API described in OpenAPI 3.0 (YAML)"}),
    ("/openapi.json", "openapi", "json", {"GET": "this API described in OpenAPI 3.0 (JSON)"}),
    ("/health", "health", None, {"GET": "runq's status, with the engines served and their worker counts and "
                                        "whether its database takes commits (store); 503 when runq does not answer"}),
    ("/batch", "batches", None, {"GET": "all batches" + PAGED}),
    ("/batches", "batches", None, {"GET": "all batches (same as /batch)" + PAGED}),
    ("/batch/new", "batches", "new", {
        "POST": "start a batch; the body is YAML like runweb/example/batch-req.yaml; 201 Created, "
                "or 200 when an idempotency key (field or Idempotency-Key header) matched an earlier batch"}),
    ("/batch/{batch_id}", "batch", None, {
        "GET": f"one batch and a page of its runs (?offset=0&limit={resources.DEFAULT_LIMIT}, "
               f"limit at most {resources.MAX_LIMIT}; next_offset is null on the last page); "
               "?runs=none (or limit=0): the batch alone; ?state=waiting|running|finished|failed|cancelled: "
               "only runs in that state (offset and next_offset count them)"}),
    ("/batch/{batch_id}/results", "batch", "results", {
        "GET": "every result (finished and failed runs; ?state=finished|failed) streamed as JSON lines, "
               "or CSV with Accept: text/csv or ?format=csv (result keys flattened with dots)"}),
    ("/batch/{batch_id}/cancel", "batch", "cancel", {"POST": "cancel the batch's unfinished runs"}),
    ("/batch/{batch_id}/run/{batch_index}", "run", None, {"GET": "one run with its attempts"}),
    ("/batch/{batch_id}/run/{batch_index}/cancel", "run", "cancel", {"POST": "cancel one run"}),
    ("/batch/{batch_id}/run/{batch_index}/files/{name}", "run", "file", {
        "GET": "one output file of a finished run (listed in its result's files), as a download"}),
    ("/user/{user}", "user", None, {"GET": "the batches owned by one user (your own, or anyone's for an admin)"
                                           + PAGED}),
    ("/worker", "workers", None, {"GET": "all workers, even long gone ones" + PAGED}),
    ("/workers", "workers", None, {"GET": "all workers (same as /worker)" + PAGED}),
    ("/worker/{worker_id}", "worker", None, {"GET": "one worker: its state, current run and last contact"}),
    ("/worker/{worker_id}/drain", "worker", "drain", {
        "POST": "let the worker finish its run, then take no more (admins only)"}),
    ("/metrics", "metrics", None, {"GET": "runq's counters, gauges and latency histograms, and runweb's "
                                          "request latency, in Prometheus text format"}),
)

# domain error -> (HTTP status, message prefix, extra headers)
ERRORS = {
    InvalidRequest: (400, "", {}),
    NotAuthenticated: (401, "", {"WWW-Authenticate": 'Basic realm="simx"'}),
    CrossSite: (403, "", {}),
    MisdirectedHost: (421, "", {}),
    RequestTimeout: (408, "", {}),
    BodyTooLarge: (413, "", {}),
    TooManyLogins: (429, "", {}),
    ProtocolError: (502, "bad exchange with runq: ", {}),
    RunqUnavailable: (503, "runq is unavailable: ", {"Retry-After": "5"}),
}


def endpoints() -> list[dict]:
    return [{"method": method, "path": path, "description": text}
            for path, _, _, described in ROUTES for method, text in described.items()]


def to_http(req, resp, ex: Exception, params) -> None:
    """Error handler: a domain error becomes an HTTPError, which serialize_error renders."""
    if isinstance(ex, ErrorReply):
        code = ex.code if isinstance(ex.code, int) and 400 <= ex.code <= 599 else 502
        raise falcon.HTTPError(code, description=str(ex))
    status, prefix, headers = next(v for cls, v in ERRORS.items() if isinstance(ex, cls))
    if isinstance(ex, TooManyLogins):
        headers = {"Retry-After": str(ex.retry_after)}
    raise falcon.HTTPError(status, description=prefix + str(ex), headers=headers)


def serialize_error(req, resp, ex: falcon.HTTPError) -> None:
    """Every HTTPError (ours, and Falcon's 404/405/500) in the envelope, negotiated like any reply."""
    if isinstance(ex, falcon.HTTPRouteNotFound):
        message = f"no such endpoint: {req.path} (GET / lists them)"
    elif isinstance(ex, falcon.HTTPMethodNotAllowed):
        message = f"{req.method} is not allowed on {req.path}; allowed: {(ex.headers or {}).get('Allow', '')}"
    else:
        message = ex.description or ex.title
    resp.content_type = media.negotiate(req)
    resp.media = {"status": "error", "message": message}


def create_app(client, config: simx_config.Config, own_user=None) -> falcon.App:
    """`own_user(address, port, server)`: whether a loopback client runs as runweb's own Unix user
    (default: asked of the kernel, runweb/peers.py; tests without sockets pass their own)."""
    users = auth.Users(simx_config.resolve_path(config.runweb.users_file, config.root))
    app = falcon.App(middleware=[
        request_metrics.Timing(), media.Negotiate(), hosts.KnownHosts(config.runweb.hosts, config.runweb.bind),
        origin.SameOrigin(),
        auth.Authenticate(config.runweb.trusted, users, client, config.runweb.behind_proxy,
                          **({"own_user": own_user} if own_user is not None else {})),
        dashboard.Pages(),
    ])
    media.install(app)
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(tuple(ERRORS) + (ErrorReply,), to_http)
    app.set_error_serializer(serialize_error)
    named = {
        "index": resources.Index(endpoints()),
        "openapi": openapi.Document(),
        "health": resources.Health(client),
        "batches": resources.Batches(client, config.runweb.max_body),
        "batch": resources.Batch(client, PageCache(config.runweb.page_cache)),
        "run": resources.Run(client),
        "user": resources.User(client),
        "workers": resources.Workers(client),
        "worker": resources.Worker(client),
        "metrics": metrics.Metrics(client),
    }
    for path, name, suffix, _ in ROUTES:
        app.add_route(path, named[name], suffix=suffix)
    app.add_route("/static/{name}", dashboard.Static())  # the dashboard's script and style; not an API endpoint
    return app


def head_as_get(app):
    """WSGI wrapper: HEAD is answered as GET without the body (same status and headers, errors
    included), so HEAD works on every GET endpoint."""
    def wsgi(environ, start_response):
        if environ.get("REQUEST_METHOD") != "HEAD":
            return app(environ, start_response)
        body = app({**environ, "REQUEST_METHOD": "GET"}, start_response)
        if hasattr(body, "close"):
            body.close()
        return []
    return wsgi


def get_app():
    """gunicorn's factory: configuration from conf/simx.yaml and the environment."""
    config = simx_config.load()
    return head_as_get(create_app(RunqClient.from_config(config, timeout=RUNQ_TIMEOUT), config))
