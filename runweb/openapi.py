"""GET /openapi.yaml and /openapi.json: runweb's API described in OpenAPI (runweb/openapi.yaml).

The document is a file shipped in the package, written by hand next to the
routes it describes; tests/test_runweb_openapi.py checks it validates and
names exactly the routes of ``runweb.app.ROUTES``, so it cannot drift.
"""
from __future__ import annotations

import functools
from pathlib import Path

import falcon
import yaml

PATH = Path(__file__).with_name("openapi.yaml")


@functools.lru_cache(maxsize=1)
def document() -> dict:
    return yaml.safe_load(PATH.read_text(encoding="utf-8"))


class Document:
    """The OpenAPI document, as YAML (/openapi.yaml) or JSON (/openapi.json) whatever Accept says."""

    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_YAML + "; charset=utf-8"
        resp.media = document()

    def on_get_json(self, req, resp):
        resp.content_type = falcon.MEDIA_JSON
        resp.media = document()
