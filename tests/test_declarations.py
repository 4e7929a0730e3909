"""Declared once: the batch request's fields (runweb's converters, the CLI's list, the protocol's
StartBatch, the OpenAPI schema) and the stored batch (simx.records.BATCH, the store's columns, the
views) agree, because they derive from one declaration; this guards the derivation."""
from __future__ import annotations

import dataclasses

from runq import views
from runq.store import schema as store
from runweb import batch_request, openapi
from simx import limits, protocol, records
from simx.cli import commands
from worker.session import MAX_PREFETCH, Traits

REQUEST = list(protocol.request_fields("StartBatch"))
SCHEMAS = openapi.document()["components"]["schemas"]
SPLIT = {"zip": "sweep"}   # request fields stored inside another column: {sweep, zip} in `sweep`


def test_the_request_fields_are_start_batchs_everywhere():
    assert REQUEST == [f for f in protocol.SCHEMA["StartBatch"] if f not in ("actor", "admin")]
    assert list(batch_request.FIELDS) == REQUEST
    assert list(commands.REQUEST_FIELDS) == REQUEST
    assert list(SCHEMAS["BatchRequest"]["properties"]) != [] and set(SCHEMAS["BatchRequest"]["properties"]) == set(REQUEST)
    required = [f for f in REQUEST if f not in protocol.OPTIONAL["StartBatch"]]
    assert list(batch_request.REQUIRED) == required == SCHEMAS["BatchRequest"]["required"]


def test_start_batch_is_the_batch_records_asked_fields():
    asked = records.BATCH.asked()
    assert [f for f in REQUEST if f not in SPLIT] == list(asked)
    for name in REQUEST:
        column = SPLIT.get(name, name)
        assert column in store.COLUMNS["batches"], name   # stored, so the coordinator can copy it generically
    assert store.COLUMNS is records.COLUMNS


def test_the_openapi_types_are_the_kinds():
    request = SCHEMAS["BatchRequest"]["properties"]
    for name, kind in protocol.request_fields("StartBatch").items():
        derived = openapi.kind_schema(kind)
        assert request[name].get("type") == derived.get("type"), name
        assert request[name].get("nullable", False) == derived.get("nullable", False) or name in (
            "name", "group", "user", "param"), name   # null means "" or {} there: runweb converts it


def test_the_batch_view_shows_the_declared_fields_and_the_schema_names_them():
    row = {f.name: None for f in records.BATCH.fields}
    row.update(id=1, user="u", state="active", start_time=0.0, n_finished=0, n_waiting=0, n_running=0,
               n_failed=0, n_cancelled=0)
    view = views.batch(row, 1.0)
    shown = {f.name for f in records.BATCH.shown("submit") if f.ask is not None}
    assert shown <= set(view) and not {f.name for f in records.BATCH.fields if not f.shown} & set(view)
    properties = set(SCHEMAS["Batch"]["properties"])
    assert set(view) <= properties and set(SCHEMAS["Batch"]["required"]) <= set(view)
    assert properties - set(view) == {"can_cancel"}   # runweb adds it for the asker


def test_state_vocabulary_is_the_records():
    assert SCHEMAS["RunState"]["enum"] == list(records.RUN_STATES)
    assert SCHEMAS["Batch"]["properties"]["state"]["enum"] == list(records.BATCH_STATES)


def test_worker_traits_are_the_worker_records_asked_fields():
    assert [f.name for f in dataclasses.fields(Traits)] == list(protocol.WORKER_TRAITS) == list(records.WORKER.asked())
    assert all(name in store.COLUMNS["workers"] for name in protocol.WORKER_TRAITS)
    for name in ("WorkerReady", "WorkerReconnect"):
        assert set(protocol.WORKER_TRAITS) <= set(protocol.SCHEMA[name])
    assert MAX_PREFETCH == limits.MAX_PREFETCH == protocol.PREFETCH.hi - 1


def test_the_worker_view_and_schema_show_every_trait():
    row = {f.name: None for f in records.WORKER.fields}
    view = views.worker(row, True, "idle")
    assert set(protocol.WORKER_TRAITS) <= set(view) <= set(SCHEMAS["Worker"]["properties"])


def test_the_run_and_attempt_views_are_what_the_schema_names():
    run_row = {f.name: None for f in records.RUN.fields}
    for view in (views.run(run_row), views.implicit_run({"id": 1, "state": "active"}, 0)):
        assert set(SCHEMAS["Run"]["required"]) <= set(view) <= set(SCHEMAS["Run"]["properties"])
    stored = {f.name for f in records.RUN.fields if f.shown} - {"failures", "requeues", "traceback"}   # kept, not shown
    assert stored <= set(views.run(run_row))
    attempt = views.attempt({f.name: None for f in records.ATTEMPT.fields})
    assert set(SCHEMAS["Attempt"]["required"]) <= set(attempt) <= set(SCHEMAS["Attempt"]["properties"])
