"""Output files, runq's side and the worker's Upload, without sockets: chunks written as they come,
checked against the finished report's manifest, served in pieces, refused for stale attempts, bad
names and past the per-run limit (the attempt fails and the run is retried), purged with the batch."""
import base64
import hashlib

import pytest

from simx import catalog as engines, protocol
from simx.config import BatchDefaults, RunqConfig
from runq import startup
from runq.files import Files, UploadRefused
from test_coordinator import MEMORY, CFG, Harness
from test_worker_session import TRAITS, accept, challenge
from worker.engines.outputs import WorkDir
from worker.session import Session
from worker.upload import Upload, UploadError

CATALOG = engines.parse({"engines": {"maker": {"kind": "command", "argv": ["/bin/true"], "files": True},
                                     "plain": {"kind": "command", "argv": ["/bin/true"]}}})


@pytest.fixture
def h(tmp_path):
    harness = Harness(MEMORY, cfg=RunqConfig(**{
        **{f: getattr(CFG, f) for f in ("heartbeat_interval", "lease", "grace")}, "files_max_run": 3000}))
    harness.coord = coordinator(harness, tmp_path)
    harness.files_dir = tmp_path / "files"
    yield harness
    harness.close()


def coordinator(h, tmp_path):
    return startup.coordinator(h.store, h.cfg, BatchDefaults(max_attempts=2), now=h.now, catalog=CATALOG,
                       files_dir=tmp_path / "files")


def run_key(assign):
    return {k: assign[k] for k in ("batch_id", "batch_index", "attempt")}


def chunk(h, conn, wid, assign, name, data: bytes, offset=0, last=True):
    return h.send(conn, "WorkerFileChunk", worker_id=wid, **run_key(assign), name=name, offset=offset,
                  data=base64.b64encode(data).decode(), last=last)


def entry(name, data: bytes):
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def finished(h, conn, wid, assign, *files):
    return h.report(conn, wid, assign, data={"result": {"x": 1}, "files": list(files)})


def one_run(h, n_runs=1):
    bid = h.request("StartBatch", engine="maker", n_runs=n_runs, param={})["batch_id"]
    wid = h.worker("w", engine="maker")
    return bid, wid, h.assigned("w")[-1]


def read_all(h, bid, index, name):
    out, offset = b"", 0
    while offset is not None:
        reply = h.request("RunFile", batch_id=bid, batch_index=index, name=name, offset=offset)
        assert reply["status"] == "ok", reply
        out += base64.b64decode(reply["data"])
        offset = reply["next_offset"]
    return out, reply["file"]


def test_files_uploaded_in_chunks_are_listed_with_the_result_and_served(h):
    bid, wid, assign = one_run(h)
    big = bytes(range(256)) * 9   # 2304 bytes, sent in three pieces
    for offset in (0, 1000, 2000):
        chunk(h, "w", wid, assign, "cells.csv", big[offset:offset + 1000], offset, last=offset == 2000)
    chunk(h, "w", wid, assign, "empty.txt", b"")
    finished(h, "w", wid, assign, entry("cells.csv", big), entry("empty.txt", b""))
    assert h.to("w", "RunqAck")[-1]["accepted"] is True
    run = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]
    assert run["state"] == "finished", run
    assert run["result"]["files"] == [entry("cells.csv", big), entry("empty.txt", b"")]
    assert read_all(h, bid, 0, "cells.csv") == (big, entry("cells.csv", big))
    assert read_all(h, bid, 0, "empty.txt")[0] == b""
    assert (h.files_dir / str(bid) / "0" / "1" / "cells.csv").read_bytes() == big
    missing = h.request("RunFile", batch_id=bid, batch_index=0, name="other.csv", offset=0)
    assert missing["code"] == 404 and "no file 'other.csv'" in missing["message"]


def test_a_manifest_that_does_not_match_fails_the_attempt_and_the_run_is_retried(h):
    bid, wid, assign = one_run(h)
    chunk(h, "w", wid, assign, "a.csv", b"abc")
    finished(h, "w", wid, assign, entry("a.csv", b"abd"))
    run = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]
    assert run["attempts"][0]["outcome"] == "failed"
    assert "file 'a.csv': received 3 bytes with sha256" in run["attempts"][0]["message"]
    h.tick(2)   # a failed attempt is retried after the backoff (sched.backoff_base)
    retry = h.assigned("w")[-1]
    assert retry["attempt"] == 2   # retried; the refused files are gone
    assert not (h.files_dir / str(bid) / "0" / "1").exists()
    finished(h, "w", wid, retry, entry("never.csv", b"x"))
    run = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]
    assert run["state"] == "failed" and "'never.csv' is listed but was not uploaded" in run["error"]


@pytest.mark.parametrize("name,why", [
    ("../escape", "no path separators"), ("sub/x.csv", "no path separators"), ("a\\b", "no path separators"),
    ("..", "'..'"), ("x" * 256, "longer than 255 bytes"), ("line\n", "control"),
])
def test_bad_file_names_are_refused_and_fail_the_attempt(h, name, why):
    bid, wid, assign = one_run(h)
    chunk(h, "w", wid, assign, name, b"data")
    abort = h.to("w", "RunqAbortRun")[-1]
    assert run_key(abort) == run_key(assign) and why in abort["reason"], abort
    assert list(h.files_dir.rglob("*")) == [] or not any(p.is_file() for p in h.files_dir.rglob("*"))
    attempts = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]["attempts"]
    assert attempts[0]["outcome"] == "failed" and "upload of the run's files failed" in attempts[0]["message"]


def test_an_engine_that_does_not_declare_files_cannot_upload_any(h):
    h.request("StartBatch", engine="plain", n_runs=1, param={})
    wid = h.worker("w", engine="plain")
    chunk(h, "w", wid, h.assigned("w")[-1], "a.csv", b"1")
    assert "engine 'plain' does not declare files: true" in h.to("w", "RunqAbortRun")[-1]["reason"]
    assert not any(p.is_file() for p in h.files_dir.rglob("*"))


def test_past_the_per_run_limit_the_upload_fails_and_another_worker_retries_the_run(h):
    bid, wid, assign = one_run(h)
    wid2 = h.worker("w2", engine="maker")   # idle: the retry goes to it
    chunk(h, "w", wid, assign, "a.bin", b"x" * 2000)
    chunk(h, "w", wid, assign, "b.bin", b"y" * 1001)   # 3001 > files_max_run 3000
    abort = h.to("w", "RunqAbortRun")[-1]
    assert "pass the limit of 3000 bytes per run" in abort["reason"]
    h.tick(2)   # a failed attempt is retried after the backoff (sched.backoff_base)
    retry = h.assigned("w2")[-1]
    assert (retry["batch_index"], retry["attempt"]) == (0, 2)
    assert not (h.files_dir / str(bid) / "0" / "1").exists()
    # the first worker's late chunks and report are refused as stale
    chunk(h, "w", wid, assign, "c.bin", b"z")
    assert h.to("w", "RunqAbortRun")[-1]["reason"] == "files of a stale attempt are refused"
    h.report("w", wid, assign, "WorkerAbortedRun", message="taken back")
    assert h.to("w", "RunqAck")[-1]["accepted"] is False
    chunk(h, "w2", wid2, retry, "a.bin", b"ok")
    finished(h, "w2", wid2, retry, entry("a.bin", b"ok"))
    assert h.request("RunStatus", batch_id=bid, batch_index=0)["run"]["state"] == "finished"


def test_chunks_out_of_order_are_refused_and_a_file_sent_again_starts_over(h):
    bid, wid, assign = one_run(h, n_runs=2)
    chunk(h, "w", wid, assign, "a.csv", b"abc", last=False)
    chunk(h, "w", wid, assign, "a.csv", b"abc", last=False)   # again from 0, as after a reconnect
    chunk(h, "w", wid, assign, "a.csv", b"def", offset=3)
    finished(h, "w", wid, assign, entry("a.csv", b"abcdef"))
    assert h.request("RunStatus", batch_id=bid, batch_index=0)["run"]["state"] == "finished"
    second = h.assigned("w")[-1]
    chunk(h, "w", wid, second, "a.csv", b"abc", last=False)
    chunk(h, "w", wid, second, "a.csv", b"xyz", offset=7)
    assert "at offset 7: runq has 3 bytes of it" in h.to("w", "RunqAbortRun")[-1]["reason"]


def test_after_a_runq_restart_the_manifest_is_checked_against_the_disk(h, tmp_path):
    bid, wid, assign = one_run(h)
    chunk(h, "w", wid, assign, "a.csv", b"kept")
    h.restart()
    h.coord = coordinator(h, tmp_path)
    h.reconnect("w-again", wid, claim=assign)
    finished(h, "w-again", wid, assign, entry("a.csv", b"kept"))
    run = h.request("RunStatus", batch_id=bid, batch_index=0)["run"]
    assert run["state"] == "finished", run


def test_retention_purges_a_batch_with_its_files(tmp_path):
    harness = Harness(MEMORY, cfg=RunqConfig(retention_days=1))
    harness.coord = coordinator(harness, tmp_path)
    try:
        bid, wid, assign = one_run(harness)
        chunk(harness, "w", wid, assign, "a.csv", b"1")
        finished(harness, "w", wid, assign, entry("a.csv", b"1"))
        assert (tmp_path / "files" / str(bid) / "0" / "1" / "a.csv").exists()
        harness.tick(3 * 86400)
        assert harness.request("BatchStatus", batch_id=bid)["code"] == 404
        assert not (tmp_path / "files" / str(bid)).exists()
    finally:
        harness.close()


def test_files_are_purged_with_their_batch(tmp_path):
    files = Files(tmp_path)
    for bid in (1, 2):
        files.write((bid, 0, 1), {"name": "a", "offset": 0, "data": base64.b64encode(b"1").decode(), "last": True})
    assert files.purge(lambda bid: bid == 2) == 1
    assert not (tmp_path / "1").exists() and (tmp_path / "2" / "0" / "1" / "a").read_bytes() == b"1"


def test_a_chunk_larger_than_a_mebibyte_or_not_base64_is_refused(tmp_path):
    files = Files(tmp_path)
    with pytest.raises(UploadRefused, match="larger than 1048576 bytes"):
        files.write((1, 0, 1), {"name": "a", "offset": 0, "last": False,
                                "data": base64.b64encode(b"x" * (1024 * 1024 + 1)).decode()})
    with pytest.raises(UploadRefused, match="not base64"):
        files.write((1, 0, 1), {"name": "a", "offset": 0, "last": False, "data": "!!!"})


# ---- the worker's side: Upload turns a work directory's out/ into chunks


def workdir(tmp_path, files: dict) -> WorkDir:
    w = WorkDir(tmp_path / "work", 1, 0, 1)
    for name, data in files.items():
        (w.out / name).parent.mkdir(parents=True, exist_ok=True)
        (w.out / name).write_bytes(data)
    return w


def test_an_upload_sends_each_file_in_order_in_bounded_chunks_and_can_start_over(tmp_path):
    w = workdir(tmp_path, {"a.csv": b"0123456789", "b.txt": b""})
    up = Upload((1, 0, 1), w, w.manifest(), chunk=4)
    msgs = list(iter(lambda: up.next_message(5), None))
    assert [(m["name"], m["offset"], base64.b64decode(m["data"]), m["last"]) for m in msgs] == [
        ("a.csv", 0, b"0123", False), ("a.csv", 4, b"4567", False), ("a.csv", 8, b"89", True),
        ("b.txt", 0, b"", True)]
    assert all(m["type"] == "WorkerFileChunk" and m["worker_id"] == 5 and m["attempt"] == 1 for m in msgs)
    up.restart()
    assert up.next_message(5)["offset"] == 0
    up.close()
    assert not w.path.exists()


def test_files_in_subdirectories_of_out_fail_the_upload_clearly(tmp_path):
    w = workdir(tmp_path, {"sub/x.csv": b"1"})
    with pytest.raises(UploadError, match="only files directly in out/ are uploaded"):
        Upload((1, 0, 1), w, w.manifest())


# ---- the worker's Session: the files go before the finished report, and stop when runq takes the run back


class Maker:
    """An engine with files: writes out/a.csv, keeps the work directory for take_outputs."""

    name = "dummy"

    def __init__(self, root):
        self.root, self.kept = root, {}

    def run(self, param, progress, abort, context):
        w = WorkDir(self.root, context.batch_id, context.batch_index, context.attempt)
        (w.out / "a.csv").write_bytes(b"x" * 2500)
        self.kept[(context.batch_id, context.batch_index, context.attempt)] = w
        return {"result": 1, "files": w.manifest()}

    def take_outputs(self, key):
        return self.kept.pop(tuple(key), None)


def session_with_run(tmp_path, sent):
    s = Session(TRAITS, Maker(tmp_path / "work"), sent.append, lambda: None)
    s.sent_to_test = sent
    accept(s)
    s.handle(protocol.message("RunqAssignRun", batch_id=1, batch_index=0, attempt=1, seq=1, engine="dummy",
                              param={}, time_limit=None), 0.0)
    assert s.job.wait(5)   # on the engine thread (perfw), not a thread per run
    s.advance(0.1)
    return s


def test_the_session_sends_every_chunk_then_the_finished_report_and_lists_the_run_meanwhile(tmp_path):
    sent = []
    s = session_with_run(tmp_path, sent)
    assert s.upload is not None and [m["type"] for m in sent] == []   # nothing until the loop pumps
    s.advance(20.0)   # a heartbeat while uploading names the run: runq must not take it back
    assert sent[-1]["type"] == "WorkerHeartbeat" and sent[-1]["runs"] == [[1, 0, 1]]
    while s.send_upload():
        pass
    types = [m["type"] for m in sent[1:]]
    assert types == ["WorkerFileChunk", "WorkerFinishedRun"]
    assert sent[-1]["data"]["files"][0]["size"] == 2500 and s.upload is None
    assert not any(p.is_file() for p in (tmp_path / "work").rglob("*"))   # removed once sent


def test_the_session_reports_aborted_when_runq_refuses_the_files(tmp_path):
    sent = []
    s = session_with_run(tmp_path, sent)
    s.send_upload()
    s.handle(protocol.message("RunqAbortRun", batch_id=1, batch_index=0, attempt=1,
                              reason="upload of the run's files failed: full"), 1.0)
    assert sent[-1]["type"] == "WorkerAbortedRun" and "full" in sent[-1]["message"]
    assert s.upload is None and not s.send_upload()


def test_the_session_sends_the_files_again_after_a_reconnect_that_keeps_the_run(tmp_path):
    sent = []
    s = session_with_run(tmp_path, sent)
    s.send_upload()
    s.disconnected()
    challenge(s)
    s.handle(protocol.message("RunqAcceptWorker", worker_id=3, heartbeat_interval=10.0, keep_run=True), 2.0)
    del sent[:]
    while s.send_upload():
        pass
    assert [(m["type"], m.get("offset")) for m in sent] == [("WorkerFileChunk", 0), ("WorkerFinishedRun", None)]
