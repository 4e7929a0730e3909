"""Scenarios of the cell-transmission model: the built-in ones (by id) and inline documents (YAML or
XML text), read into one checked shape.  A bad scenario raises ScenarioError (ctm.py exits 3).

YAML form (XML: the same names as elements and attributes, see SCENARIO_XML below)::

    name: ring road
    dt: 5                         # seconds per step (default: the largest the cells allow)
    cells:                        # upstream to downstream; ``count`` repeats a cell
      - {length: 0.5, lanes: 3, vf: 100, w: 20, qmax: 2000, kjam: 150, count: 4}
    demand: [[0, 4000], [600, 5500]]          # [time s, veh/h] at the upstream end, piecewise constant
    onramps:  [{cell: 3, demand: [[0, 600]], capacity: 1500, max_queue: 60}]
    offramps: [{cell: 6, split: 0.1}]         # fraction of the cell's outflow that leaves
    events:   [{cell: 8, start: 300, end: 900, capacity_factor: 0.5}]   # incidents (param events: true)

Units: km, km/h, veh/h (per lane for qmax), veh/km per lane (kjam), seconds.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

import yaml

MAX_CELLS = 500
MAX_POINTS = 1000
MAX_TEXT = 65536


class ScenarioError(ValueError):
    pass


def _cell(length, lanes, vf=100.0, w=20.0, qmax=2000.0, kjam=150.0, count=1):
    return {"length": length, "lanes": lanes, "vf": vf, "w": w, "qmax": qmax, "kjam": kjam, "count": count}


BUILTIN = {
    # The id of the original README's aurora example: a 3-lane freeway with an on-ramp, an
    # off-ramp, a lane drop and an incident.
    123: {
        "name": "freeway 123: on-ramp, off-ramp, lane drop, incident",
        "cells": [_cell(0.5, 3, count=5), _cell(0.5, 3, count=4), _cell(0.5, 2, qmax=2100, count=3)],
        "demand": [[0, 4200], [300, 5400], [1800, 3600]],
        "onramps": [{"cell": 4, "demand": [[0, 700], [600, 900]], "capacity": 1600, "max_queue": 40}],
        "offramps": [{"cell": 7, "split": 0.12}],
        "events": [{"cell": 10, "start": 60, "end": 1200, "capacity_factor": 0.6}],
    },
    1: {
        "name": "small corridor, 4 cells",
        "cells": [_cell(0.25, 2, count=4)],
        "demand": [[0, 3000]],
    },
}

SCENARIO_XML = """\
<scenario name="two cells" dt="5">
  <cell length="0.5" lanes="2" vf="100" w="20" qmax="2000" kjam="150" count="2"/>
  <demand><point t="0" flow="3000"/></demand>
  <onramp cell="1" capacity="1500" max_queue="50"><point t="0" flow="400"/></onramp>
  <offramp cell="0" split="0.1"/>
  <event cell="1" start="0" end="60" capacity_factor="0.5"/>
</scenario>
"""


def load(scenario) -> dict:
    """A checked scenario from an id (int, or digits in a string) or a YAML/XML document."""
    if isinstance(scenario, bool):
        raise ScenarioError("scenario: an id or a document, not a boolean")
    if isinstance(scenario, int) or (isinstance(scenario, str) and scenario.strip().isdigit()):
        sid = int(scenario)
        if sid not in BUILTIN:
            raise ScenarioError(f"scenario {sid}: no built-in scenario with this id (ids: "
                                f"{', '.join(map(str, sorted(BUILTIN)))})")
        return check(BUILTIN[sid])
    if not isinstance(scenario, str):
        raise ScenarioError("scenario: an id or a YAML/XML document")
    if len(scenario) > MAX_TEXT:
        raise ScenarioError(f"scenario: a document of more than {MAX_TEXT} characters")
    text = scenario.strip()
    if text.startswith("<"):
        return check(from_xml(text))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario: not valid YAML: {exc}") from None
    return check(doc)


def from_xml(text: str) -> dict:
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
        raise ScenarioError("scenario: XML with a DOCTYPE or entities is refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ScenarioError(f"scenario: not valid XML: {exc}") from None
    if root.tag != "scenario":
        raise ScenarioError(f"scenario: the XML root must be <scenario>, not <{root.tag}>")

    def points(el):
        return [[el_p.get("t"), el_p.get("flow")] for el_p in el.findall("point")]

    doc = {"name": root.get("name", ""), "cells": [dict(c.attrib) for c in root.findall("cell")]}
    if root.get("dt") is not None:
        doc["dt"] = root.get("dt")
    demand = root.find("demand")
    doc["demand"] = points(demand) if demand is not None else []
    doc["onramps"] = [dict(r.attrib, demand=points(r)) for r in root.findall("onramp")]
    doc["offramps"] = [dict(r.attrib) for r in root.findall("offramp")]
    doc["events"] = [dict(e.attrib) for e in root.findall("event")]
    return doc


def _num(value, where: str, lo: float, hi: float, integer: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        x = int(value) if integer and not isinstance(value, float) else float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"scenario {where}: not a number: {value!r}") from None
    if not lo <= x <= hi:
        raise ScenarioError(f"scenario {where}: {x} is not within {lo:g}..{hi:g}")
    return x


def _profile(points, where: str) -> list[tuple[float, float]]:
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
        raise ScenarioError(f"scenario {where}: a list of 1..{MAX_POINTS} [time, flow] points")
    out = []
    for i, p in enumerate(points):
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ScenarioError(f"scenario {where}[{i}]: a [time, flow] pair")
        out.append((_num(p[0], f"{where}[{i}] time", 0, 1e7), _num(p[1], f"{where}[{i}] flow", 0, 1e5)))
    return sorted(out)


def check(doc) -> dict:
    if not isinstance(doc, dict):
        raise ScenarioError("scenario: a mapping with cells and demand")
    cells = []
    for i, c in enumerate(doc.get("cells") or []):
        if not isinstance(c, dict):
            raise ScenarioError(f"scenario cells[{i}]: a mapping")
        count = int(_num(c.get("count", 1), f"cells[{i}].count", 1, MAX_CELLS, integer=True))
        cell = {k: _num(c.get(k, d), f"cells[{i}].{k}", lo, hi) for k, d, lo, hi in (
            ("length", None, 0.01, 100), ("lanes", None, 1, 20), ("vf", 100, 1, 300), ("w", 20, 1, 300),
            ("qmax", 2000, 1, 10000), ("kjam", 150, 1, 1000))}
        if cell["qmax"] >= cell["vf"] * cell["kjam"]:
            raise ScenarioError(f"scenario cells[{i}]: qmax must be below vf * kjam")
        cells.extend(dict(cell) for _ in range(count))
        if len(cells) > MAX_CELLS:
            raise ScenarioError(f"scenario: more than {MAX_CELLS} cells")
    if not cells:
        raise ScenarioError("scenario: no cells")
    n = len(cells) - 1
    dt_max = min(c["length"] / max(c["vf"], c["w"]) for c in cells) * 3600
    dt = _num(doc.get("dt", dt_max), "dt", 0.1, dt_max) if doc.get("dt") is not None else dt_max
    out = {"name": str(doc.get("name") or ""), "dt": dt, "cells": cells,
           "demand": _profile(doc.get("demand"), "demand"), "onramps": [], "offramps": [], "events": []}
    for i, r in enumerate(_list(doc, "onramps")):
        out["onramps"].append({"cell": int(_num(r.get("cell"), f"onramps[{i}].cell", 0, n, integer=True)),
                               "demand": _profile(r.get("demand"), f"onramps[{i}].demand"),
                               "capacity": _num(r.get("capacity", 1800), f"onramps[{i}].capacity", 1, 10000),
                               "max_queue": _num(r.get("max_queue", 50), f"onramps[{i}].max_queue", 0, 1e5)})
    for i, r in enumerate(_list(doc, "offramps")):
        out["offramps"].append({"cell": int(_num(r.get("cell"), f"offramps[{i}].cell", 0, n, integer=True)),
                                "split": _num(r.get("split"), f"offramps[{i}].split", 0, 0.9)})
    for i, e in enumerate(_list(doc, "events")):
        out["events"].append({"cell": int(_num(e.get("cell"), f"events[{i}].cell", 0, n, integer=True)),
                              "start": _num(e.get("start"), f"events[{i}].start", 0, 1e7),
                              "end": _num(e.get("end"), f"events[{i}].end", 0, 1e7),
                              "capacity_factor": _num(e.get("capacity_factor"), f"events[{i}].capacity_factor",
                                                      0.01, 1)})
    return out


def _list(doc: dict, key: str) -> list:
    items = doc.get(key) or []
    if not isinstance(items, list) or len(items) > MAX_CELLS or not all(isinstance(x, dict) for x in items):
        raise ScenarioError(f"scenario {key}: a list of at most {MAX_CELLS} mappings")
    return items
