"""REST resources, one per noun: each responder asks runq one question and returns the answer.

A reply keeps the original's envelope ``{status, message, ...data}``; runq's
``type`` and ``code`` stay on the wire (``code`` becomes the HTTP status of an
error).  Path and query parameters are checked here, naming the parameter;
the body of POST /batch/new is checked by ``runweb.batch_request``.
"""
from __future__ import annotations

import base64
import hashlib
import urllib.parse

import falcon

from simx import limits, records
from simx.client import RunqUnavailable
from simx.protocol import ProtocolError

from . import batch_request, media, results
from .page_cache import PageCache
from .errors import BodyTooLarge, InvalidRequest, RequestTimeout, ErrorReply

DEFAULT_LIMIT, MAX_LIMIT = limits.DEFAULT_PAGE, limits.MAX_PAGE
RUN_STATES = records.RUN_STATES
JSON_LINES, CSV = "application/x-ndjson; charset=utf-8", "text/csv; charset=utf-8"
FORM_HINT = ("; the body has no line breaks, as `curl -d @FILE` sends it (it strips them): "
             "send the file with `curl --data-binary @FILE`")
MAX_ID = limits.MAX_ID  # what a database integer column holds


def ask(client, req: falcon.Request, mtype: str, **fields) -> dict:
    """One request to runq, as the caller (req.context.actor, admin) -> the reply's envelope;
    an error reply raises ErrorReply."""
    return ask_plain(client, mtype, actor=req.context.actor, admin=req.context.admin, **fields)


def ask_plain(client, mtype: str, **fields) -> dict:
    """One request to runq as is (Ping: about runq, not about anyone's batches)."""
    reply = client.request(mtype, **fields)
    if reply.get("status") != "ok":
        raise ErrorReply(reply.get("code", 502), reply.get("message") or f"runq refused {mtype}")
    data = {k: v for k, v in reply.items() if k not in ("type", "code", "status", "message")}
    return {"status": "ok", "message": reply.get("message", "ok"), **data}


def integer(name: str, text: str, low: int = 0, high: int = MAX_ID) -> int:
    """A path or query parameter of ASCII digits within [low, high]."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or not low <= int(text) <= high:
        bounds = f"an integer >= {low}" if high == MAX_ID else f"an integer from {low} to {high}"
        raise InvalidRequest(f"parameter '{name}' must be {bounds}, not {text[:40]!r}")
    return int(text)


def query_integer(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    value = req.params.get(name)
    if value is None:
        return default
    if isinstance(value, list):
        raise InvalidRequest(f"parameter '{name}' is given more than once")
    return integer(name, value, low, high)


def page(req: falcon.Request) -> dict:
    """?offset=&limit= of a paged listing, checked."""
    return {"offset": query_integer(req, "offset", 0, 0, MAX_ID),
            "limit": query_integer(req, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)}


def choice(req: falcon.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    """A query parameter that must be one of `allowed` (None when absent)."""
    value = req.params.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        raise InvalidRequest(f"parameter '{name}' is given more than once")
    if value not in allowed:
        raise InvalidRequest(f"parameter '{name}' must be one of {', '.join(allowed)}, not {value[:40]!r}")
    return value


def looks_form_encoded(req: falcon.Request, body: bytes) -> bool:
    """A body sent with `curl -d @file`: labelled as a form, on one line though it holds several fields."""
    form = (req.content_type or "").startswith("application/x-www-form-urlencoded")
    return form and b"\n" not in body.strip() and body.count(b":") >= 2


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The raw body, whatever its Content-Type; BodyTooLarge past `limit` bytes."""
    too_large = BodyTooLarge(f"request body is larger than the {limit}-byte limit (runweb.max_body)")
    if req.content_length is not None and req.content_length > limit:
        raise too_large
    # Chunked uploads have no Content-Length; a server that ends the input itself says so (gunicorn does).
    chunked = req.content_length is None and req.env.get("wsgi.input_terminated")
    try:
        body = (req.stream if chunked else req.bounded_stream).read(limit + 1)
    except TimeoutError:  # runweb.io_timeout without progress (gunicorn_worker sets it)
        raise RequestTimeout("the request body stopped arriving; send it whole") from None
    if len(body) > limit:
        raise too_large
    return body


def header_text(req: falcon.Request, name: str) -> str | None:
    """A header as the client's UTF-8 text (WSGI hands headers over as latin-1)."""
    value = req.get_header(name)
    try:
        return None if value is None else value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidRequest(f"header '{name}' is not UTF-8") from None


class Index:
    """GET /: the endpoints, with what each does."""

    def __init__(self, endpoints: list[dict]):
        self.endpoints = endpoints

    def on_get(self, req, resp):
        resp.media = {"status": "ok", "message": "simx runweb; endpoints below", "endpoints": self.endpoints}


class Health:
    """GET /health: runq's own status (runq.store: whether its database takes commits); 503 when
    runq does not answer."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp):
        try:
            resp.media = reply = ask_plain(self.client, "Ping")
        except (ErrorReply, ProtocolError) as exc:
            raise RunqUnavailable(f"runq answered Ping badly: {exc}") from None
        store = (reply.get("runq") or {}).get("store", "ok")
        if store != "ok":   # runq is up and serves reads: 200, saying what it refuses
            reply["message"] = f"runq takes no new work: its database refuses commits ({store})"


class Batches:
    """GET /batch, /batches: all batches.  POST /batch/new: start one (201, or 200 if the key matched)."""

    def __init__(self, client, max_body: int):
        self.client, self.max_body = client, max_body

    def on_get(self, req, resp):
        resp.media = ask(self.client, req, "BatchList", **page(req))

    def on_post_new(self, req, resp):
        body = read_body(req, self.max_body)
        try:
            fields = batch_request.parse(body, header_text(req, "Idempotency-Key"))
        except InvalidRequest as exc:
            if looks_form_encoded(req, body):
                raise InvalidRequest(f"{exc}{FORM_HINT}") from None
            raise
        resp.media = reply = ask(self.client, req, "StartBatch", **fields)
        if reply.get("created", True):
            resp.status, resp.location = falcon.HTTP_201, f"/batch/{reply.get('batch_id')}"


class Batch:
    """GET /batch/{id}: the batch and a page of its runs (?runs=none or limit=0: the batch alone;
    ?state=: only runs in that state).  GET /batch/{id}/results: every result, streamed.
    POST /batch/{id}/cancel."""

    def __init__(self, client, pages: PageCache | None = None):
        self.client, self.pages = client, pages if pages is not None else PageCache(0)

    def on_get(self, req, resp, batch_id):
        fields = {"offset": query_integer(req, "offset", 0, 0, MAX_ID),
                  "limit": query_integer(req, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT)}
        if choice(req, "runs", ("all", "none")) == "none":
            fields["limit"] = 0
        state = choice(req, "state", RUN_STATES)
        if state is not None:
            fields["state"] = state
        batch_id = integer("batch_id", batch_id)
        if fields["limit"] == 0:
            resp.media = ask(self.client, req, "BatchStatus", batch_id=batch_id, **fields)
            return
        send_page(req, resp, *self._page(req, resp.content_type, batch_id, fields))

    def _page(self, req, media_type: str, batch_id: int, fields: dict) -> tuple[bytes, bytes, object]:
        """(header, rest) of the page as bytes in `media_type`, and runq's tag of the page (None: runq
        makes none for it).  runq is asked every time (it checks who asks); the rest comes from
        the cache when runq says the page has not changed since, else from runq's reply (and is kept)."""
        key = (batch_id, fields["offset"], fields["limit"], fields.get("state"), media_type)
        cached, leading = self.pages.get_or_lead(key)
        try:
            reply = ask(self.client, req, "BatchStatus", batch_id=batch_id, **fields,
                        if_page=cached[0] if cached else "")
            page = reply.pop("page", None)   # the page's tag (None: runq makes none for it)
            reply.pop("version", None)
            if reply.pop("not_modified", False):
                if cached is None or page != cached[0]:
                    raise ProtocolError(f"runq answered not_modified for a page of batch {batch_id} "
                                        "that runweb does not hold")
                rest = cached[1]
            else:
                tail = {k: reply.pop(k) for k in list(reply) if k not in ("status", "message", "batch")}
                rest = media.rest_of(tail, media_type)
                if page is not None:
                    self.pages.put(key, page, rest)
        finally:
            if leading:
                self.pages.landed(key)
        return media.head_of(reply, media_type), rest, page

    def on_get_results(self, req, resp, batch_id):
        batch_id = integer("batch_id", batch_id)
        fmt = choice(req, "format", ("jsonl", "csv"))
        if fmt is None:
            fmt = "csv" if req.client_prefers((JSON_LINES.split(";")[0], "text/csv")) == "text/csv" else "jsonl"
        state = choice(req, "state", ("finished", "failed"))
        ask_ = lambda mtype, **fields: ask(self.client, req, mtype, **fields)  # noqa: E731
        first = ask_("BatchResults", batch_id=batch_id, **({"state": state} if state else {}))  # 404 now
        if fmt == "csv":
            try:
                names = results.columns(results.pages(ask_, batch_id, state, first))
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            resp.content_type = CSV
            resp.stream = results.csv_stream(results.pages(ask_, batch_id, state), names)
        else:
            resp.content_type = JSON_LINES
            resp.stream = results.jsonl_stream(results.pages(ask_, batch_id, state, first))

    def on_post_cancel(self, req, resp, batch_id):
        resp.media = ask(self.client, req, "CancelBatch", batch_id=integer("batch_id", batch_id))


def send_page(req, resp, head: bytes, rest: bytes, tag: str | None) -> None:
    """The page with an ETag (runq's tag of the page and the header's digest: the rest follows
    from them), 304 when the client has it; no-cache: a browser asks again each time, cheaply."""
    if tag is None:
        _body(resp, head, rest)
        return
    etag = f'"{tag}-{hashlib.blake2b(head, digest_size=8).hexdigest()}"'
    resp.etag = etag
    resp.cache_control = ("no-cache",)
    wanted = req.get_header("If-None-Match")
    if wanted is not None and (wanted.strip() == "*" or etag in [t.strip().removeprefix("W/")
                                                                  for t in wanted.split(",")]):
        resp.status = falcon.HTTP_304
        return
    _body(resp, head, rest)


def _body(resp, head: bytes, rest: bytes) -> None:
    """Both parts as they are: a big page is not copied into one more buffer."""
    resp.content_length = len(head) + len(rest)
    resp.stream = iter((head, rest))


class Run:
    """GET /batch/{id}/run/{i}: one run with its attempts.  POST /batch/{id}/run/{i}/cancel."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp, batch_id, batch_index):
        resp.media = ask(self.client, req, "RunStatus", **self._key(batch_id, batch_index))

    def on_post_cancel(self, req, resp, batch_id, batch_index):
        resp.media = ask(self.client, req, "CancelRun", **self._key(batch_id, batch_index))

    def on_get_file(self, req, resp, batch_id, batch_index, name):
        """One output file of a finished run, streamed in runq's pieces (RunFile, which checks that
        the file is listed with the run's result).  Always a download, never rendered: a file a
        program wrote must not run script on runweb's origin."""
        key = self._key(batch_id, batch_index)
        first = ask(self.client, req, "RunFile", **key, name=name, offset=0)   # 404 before the response starts
        entry = first["file"]
        resp.content_type = FILE_TYPES.get(name.rpartition(".")[2].lower(), "application/octet-stream")
        resp.content_length = entry["size"]
        resp.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{urllib.parse.quote(name)}")
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("X-Checksum-Sha256", entry["sha256"])
        resp.stream = file_pieces(lambda **fields: ask(self.client, req, "RunFile", **fields), key, name, first)

    @staticmethod
    def _key(batch_id: str, batch_index: str) -> dict:
        return {"batch_id": integer("batch_id", batch_id), "batch_index": integer("batch_index", batch_index)}


FILE_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json", "txt": "text/plain; charset=utf-8",
              "log": "text/plain; charset=utf-8"}


def file_pieces(ask_file, key: dict, name: str, reply: dict):
    """The bytes of a run's file, one RunFile reply (about 512 KiB) at a time (ask_file: RunFile as the asker)."""
    while True:
        yield base64.b64decode(reply["data"])
        if reply.get("next_offset") is None:
            return
        reply = ask_file(**key, name=name, offset=reply["next_offset"])


class User:
    """GET /user/{name}: the batches of one user."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp, user):
        user = batch_request.plain_text("parameter 'user'", user)
        resp.media = ask(self.client, req, "UserStatus", user=user, **page(req))


class Workers:
    """GET /worker, /workers: every worker runq knows, even long gone ones."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp):
        resp.media = ask(self.client, req, "WorkerList", **page(req))


class Worker:
    """GET /worker/{id}: one worker.  POST /worker/{id}/drain: it finishes its run and takes no other."""

    def __init__(self, client):
        self.client = client

    def on_get(self, req, resp, worker_id):
        resp.media = ask(self.client, req, "WorkerStatus", worker_id=integer("worker_id", worker_id))

    def on_post_drain(self, req, resp, worker_id):
        resp.media = ask(self.client, req, "DrainWorker", worker_id=integer("worker_id", worker_id))
