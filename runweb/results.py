"""GET /batch/N/results: every result of a batch as JSON lines or CSV, streamed page by page.

Pure formatting plus a page generator over any ``ask(mtype, **fields)``; no HTTP here.
JSON lines: one ``{"batch_index", "state", "result", "error"}`` object per run.  CSV: columns
``batch_index, state, error`` and then the result's keys, nested mappings flattened with dots
(``a.b``), lists and anything deeper than MAX_DEPTH as JSON text; a result that is not a
mapping is one column, ``result``; a result key named like a fixed column is ``result.KEY``.
A failure of runq in mid-stream cuts the response (chunked, so the client sees it incomplete).  CSV needs its columns before the first row, so it reads
the results twice (the first pass keeps only the column names).
"""
from __future__ import annotations

import csv
import io
import json

FIXED = ("batch_index", "state", "error")
MAX_DEPTH = 8
MAX_COLUMNS = 2000   # distinct result keys a CSV may have; more is a 400 (JSON lines has no limit)


def pages(ask, batch_id: int, state: str | None, first: dict | None = None):
    """Lists of results, one per BatchResults reply, until the last.  `first` is a reply already
    fetched (so the caller sees a 404 before the response starts)."""
    reply = first or ask("BatchResults", batch_id=batch_id, **_state(state))
    while True:
        yield reply.get("results", [])
        if reply.get("next_start") is None:
            return
        reply = ask("BatchResults", batch_id=batch_id, start=reply["next_start"], **_state(state))


def _state(state: str | None) -> dict:
    return {} if state is None else {"state": state}


def flatten(result) -> dict:
    """A result as CSV cells: {column: scalar or JSON text}."""
    if not isinstance(result, dict):
        return {"result": _cell(result)} if result is not None else {}
    out: dict = {}
    _flatten_into(out, "", result, 1)
    return out


def _flatten_into(out: dict, prefix: str, mapping: dict, depth: int) -> None:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and depth < MAX_DEPTH:
            _flatten_into(out, name + ".", value, depth + 1)
        else:
            out[name] = _cell(value)


def _cell(value):
    if value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def columns(all_pages) -> list[str]:
    """The result columns of every page, in order of first appearance; ValueError past MAX_COLUMNS."""
    seen: dict[str, None] = {}
    for results in all_pages:
        for r in results:
            for name in flatten(r.get("result")):
                if name not in seen:
                    if len(seen) >= MAX_COLUMNS:
                        raise ValueError(f"the results have more than {MAX_COLUMNS} distinct keys; "
                                         "ask for JSON lines instead of CSV")
                    seen[name] = None
    return list(seen)


def csv_stream(all_pages, result_columns: list[str]):
    """CSV bytes: the header, then one line per result."""
    header = list(FIXED) + [c if c not in FIXED else f"result.{c}" for c in result_columns]
    yield _csv_line(header)
    for results in all_pages:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        for r in results:
            cells = flatten(r.get("result"))
            writer.writerow([r.get("batch_index"), r.get("state"), r.get("error")]
                            + [cells.get(c) for c in result_columns])
        yield buf.getvalue().encode("utf-8")


def jsonl_stream(all_pages):
    """JSON lines bytes, one page at a time."""
    for results in all_pages:
        yield "".join(json.dumps({k: r.get(k) for k in ("batch_index", "state", "result", "error")},
                                 ensure_ascii=False, separators=(",", ":")) + "\n"
                      for r in results).encode("utf-8")


def _csv_line(cells: list) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue().encode("utf-8")
