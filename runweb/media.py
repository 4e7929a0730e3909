"""Content negotiation: replies in YAML (the original's format, and the default) or JSON.

Falcon picks the response handler by ``resp.content_type``, not by Accept, so
the Negotiate middleware sets it on every request.  YAML is offered first, so
curl's ``Accept: */*`` gets YAML; JSON goes to clients that prefer it.
Request bodies are not parsed here: POST /batch/new reads its raw body,
because ``curl --data-binary`` labels YAML as a form.
"""
from __future__ import annotations

import falcon
import yaml

YAML = falcon.MEDIA_YAML + "; charset=utf-8"
JSON = falcon.MEDIA_JSON  # UTF-8 by definition; non-ASCII is written as is


class _Dumper(yaml.SafeDumper):
    """SafeDumper that never writes &anchors (replies are trees) and shows multi-line text as blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, text: str):
    # Multi-line text (tracebacks, results) as a block.  Text with a ' in double quotes when it
    # needs quoting at all, so "unknown field 'x': ..." does not come out as 'unknown field ''x'': ...'.
    # PyYAML still picks another style where the asked one cannot hold the text.
    style = "|" if "\n" in text else None
    if style is None and "'" in text:
        analysis = dumper.analyze_scalar(text)
        if not (analysis.allow_flow_plain and analysis.allow_block_plain):
            style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data) -> str:
    """YAML text in the key order given, non-ASCII unescaped, long lines unwrapped."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=float("inf"))


class YAMLHandler(falcon.media.BaseHandler):
    def serialize(self, media, content_type) -> bytes:
        return dump_yaml(media).encode("utf-8")


def negotiate(req: falcon.Request) -> str:
    """The content type of the reply: JSON if the client prefers it, else YAML."""
    return JSON if req.client_prefers((falcon.MEDIA_YAML, JSON)) == JSON else YAML


class Negotiate:
    """Middleware: choose the reply's media type before anything can fail."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = negotiate(req)
        resp.vary = ("Accept",)


def install(app: falcon.App) -> None:
    app.resp_options.media_handlers.update({
        falcon.MEDIA_YAML: YAMLHandler(),
        JSON: falcon.media.JSONHandler(),
    })
