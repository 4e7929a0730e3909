"""Content negotiation: replies in YAML (the original's format, and the default) or JSON.

Falcon picks the response handler by ``resp.content_type``, not by Accept, so
the Negotiate middleware sets it on every request.  YAML is offered first, so
curl's ``Accept: */*`` gets YAML; JSON goes to clients that prefer it.
Request bodies are not parsed here: POST /batch/new reads its raw body,
because ``curl --data-binary`` labels YAML as a form.
"""
from __future__ import annotations

import functools
import json
import threading

import falcon
import yaml

YAML = falcon.MEDIA_YAML + "; charset=utf-8"
JSON = falcon.MEDIA_JSON  # UTF-8 by definition; non-ASCII is written as is


# libyaml's emitter when PyYAML has it (about 10x faster than the pure-Python one on a big page);
# the representers and every option are the same, so the text is too
_Base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
# the pure-Python emitter's scalar analysis, for _represent_str (libyaml's is not exposed)
_ANALYZER = yaml.emitter.Emitter(None, allow_unicode=True)


class _Dumper(_Base):
    """Never writes &anchors (replies are trees) and shows multi-line text as blocks."""

    def ignore_aliases(self, data) -> bool:
        return True


def _represent_str(dumper, text: str):
    # Multi-line text (tracebacks, results) as a block.  Text with a ' in double quotes when it
    # needs quoting at all, so "unknown field 'x': ..." does not come out as 'unknown field ''x'': ...'.
    # PyYAML still picks another style where the asked one cannot hold the text.
    style = "|" if "\n" in text else None
    if style is None and "'" in text:
        analysis = _ANALYZER.analyze_scalar(text)
        if not (analysis.allow_flow_plain and analysis.allow_block_plain):
            style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


class _PyDumper(yaml.SafeDumper):
    ignore_aliases = _Dumper.ignore_aliases


_PyDumper.add_representer(str, _represent_str)
# where libyaml writes text differently from PyYAML's emitter: characters outside the BMP and NEL
# escaped (\U, \N), a "..." document end after a |+ block; such text is dumped again the old way
_LIBYAML_DIFFERS = ("\\U", "\\N")


def dump_yaml(data) -> str:
    """YAML text in the key order given, non-ASCII unescaped, long lines unwrapped."""
    if _Base is yaml.SafeDumper:
        return _dump(data, _PyDumper, float("inf"))
    text = _dump(data, _Dumper, 2**31 - 1)   # libyaml takes an int width
    if text.endswith("\n...\n") or any(s in text for s in _LIBYAML_DIFFERS):
        return _dump(data, _PyDumper, float("inf"))
    return text


def _dump(data, dumper, width) -> str:
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=width)


_dump_json = functools.partial(json.dumps, ensure_ascii=False)   # what Falcon's JSONHandler writes


_YAML_HEADS: dict[str, bytes] = {}   # JSON of a header -> its YAML: an ended batch's header repeats
_YAML_HEADS_MAX = 256
# bytes the kept headers may hold (JSON key + YAML), per process: a header carries its batch's
# param (up to runq.api.MAX_PARAM_BYTES), and a running batch's header is new on every request
_YAML_HEADS_BYTES = 4 * 1024 * 1024
_yaml_heads_size = 0
_yaml_heads_lock = threading.Lock()   # gthread: the size must follow the dict


def head_of(envelope: dict, media_type: str) -> bytes:
    """The start of a reply whose other keys `rest_of` encodes: head_of(a) + rest_of(b) is the
    encoding of {**a, **b} (a top-level mapping splits at any key, in YAML's block style too)."""
    global _yaml_heads_size
    text = _dump_json(envelope)
    if media_type != YAML:
        return text[:-1].encode("utf-8")
    head = _YAML_HEADS.get(text)
    if head is None:   # about 20x the cost of the JSON, even with libyaml
        head = dump_yaml(envelope)
        if head.endswith("\n...\n"):   # a |+ block last: the document end marker would end the reply there
            head = head[:-len("...\n")]
        head = head.encode("utf-8")
        size = 4 * len(text) + len(head)   # a str may take up to 4 bytes a character
        if size <= _YAML_HEADS_BYTES // 16:
            with _yaml_heads_lock:
                if len(_YAML_HEADS) >= _YAML_HEADS_MAX or _yaml_heads_size + size > _YAML_HEADS_BYTES:
                    _YAML_HEADS.clear()
                    _yaml_heads_size = 0
                if text not in _YAML_HEADS:
                    _YAML_HEADS[text] = head
                    _yaml_heads_size += size
    return head


def rest_of(tail: dict, media_type: str) -> bytes:
    """The rest of a reply after head_of (`tail` not empty)."""
    if media_type == YAML:
        return dump_yaml(tail).encode("utf-8")
    return (", " + _dump_json(tail)[1:]).encode("utf-8")


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
