"""The dashboard: HTML pages on the API's own URLs for clients that prefer text/html.

A browser asking for ``/``, ``/batch``, ``/batch/N``, ``/batch/N/run/I`` or
``/worker`` gets a page; curl (``Accept: */*``) keeps YAML and scripts asking
for JSON keep JSON, because the ``Pages`` middleware steps in only when
text/html is preferred over both.  A page is a fixed template around the ids
in its URL; ``static/dash.js`` fills it by polling the same URL with
``Accept: application/json`` every second (short requests only: a long-lived
connection would hold one of gunicorn's few workers).  The script builds the
DOM with text nodes only, so names and messages never become markup, and the
Content-Security-Policy below allows no inline script or style at all.

Cancel and drain buttons POST with same-origin ``fetch()``: the browser sends
its Origin and the credentials it already holds; no token that curl would lack.
A button is hidden when the JSON view says ``can_cancel: false`` (a batch or
run) or ``can_drain: false`` (a worker); a refusal (403) is shown as a message.
"""
from __future__ import annotations

import html
import string
import urllib.parse
from importlib import resources as package_files

import falcon

from .resources import integer

HTML = "text/html"
POLL_MS = 1000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HTML_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".svg": "image/svg+xml"}

# route template -> (page template, title); the page's JSON comes from the same URL
PAGES = {
    "/": ("batches", "Batches"),
    "/batch": ("batches", "Batches"),
    "/batches": ("batches", "Batches"),
    "/user/{user}": ("batches", "Batches of {user}"),
    "/batch/{batch_id}": ("batch", "Batch {batch_id}"),
    "/batch/{batch_id}/run/{batch_index}": ("run", "Batch {batch_id}, run {batch_index}"),
    "/worker": ("workers", "Workers"),
    "/workers": ("workers", "Workers"),
    "/worker/{worker_id}": ("workers", "Worker {worker_id}"),
}
PARAM_CHECKS = {"batch_id": integer, "batch_index": integer, "worker_id": integer}


def _read(folder: str, name: str) -> str:
    return package_files.files(__package__).joinpath(folder, name).read_text(encoding="utf-8")


def prefers_html(req: falcon.Request) -> bool:
    """True for browsers: text/html ranks above YAML and JSON (YAML first wins a tie, as for */*)."""
    return req.client_prefers((falcon.MEDIA_YAML, falcon.MEDIA_JSON, HTML)) == HTML


class Renderer:
    """string.Template pages: every value substituted is HTML-escaped; templates are read once."""

    def __init__(self):
        self.layout = string.Template(_read("templates", "layout.html"))
        self.bodies = {name: string.Template(_read("templates", f"{name}.html"))
                       for name in {page for page, _ in PAGES.values()}}

    def page(self, name: str, title: str, api: str, **values) -> str:
        safe = {k: html.escape(str(v), quote=True) for k, v in values.items()}
        body = self.bodies[name].substitute(safe)
        return self.layout.substitute(title=html.escape(title), page=name, api=html.escape(api, quote=True),
                                      poll=POLL_MS, body=body)


class Pages:
    """Middleware: a GET that prefers text/html on a page's route gets the page, not the API reply."""

    def __init__(self, renderer: Renderer | None = None):
        self.renderer = renderer or Renderer()

    def process_resource(self, req, resp, resource, params) -> None:
        page = PAGES.get(req.uri_template)
        if page is None or req.method not in ("GET", "HEAD") or not prefers_html(req):
            return
        checked = {k: PARAM_CHECKS[k](k, v) if k in PARAM_CHECKS else v for k, v in params.items()}
        name, title = page
        api = "/batch" if req.uri_template == "/" else urllib.parse.quote(req.path)
        resp.content_type = falcon.MEDIA_HTML  # with charset=utf-8
        resp.text = self.renderer.page(name, title.format(**checked), api, **checked)
        resp.set_headers(HTML_HEADERS)
        resp.complete = True


class Static:
    """GET /static/{name}: the dashboard's script and style sheet, read from the package once."""

    def __init__(self, names=("dash.js", "dash.css", "favicon.svg")):
        self.files = {name: _read("static", name).encode("utf-8") for name in names}

    def on_get(self, req, resp, name):
        data = self.files.get(name)
        if data is None:
            raise falcon.HTTPNotFound(description=f"no static file {name!r}")
        resp.content_type = STATIC_TYPES[name[name.rindex("."):]]
        resp.data = data
        resp.set_headers({"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"})
