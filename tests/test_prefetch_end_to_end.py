"""Prefetch end to end (the mq merge of perfq and perfw): real runq, real workers, some with
`--prefetch 4`, one without.  Every run finishes once, none is lost or requeued, and the
batch ends done; a prefetching worker's runs go through `assigned` without costing an attempt."""
from __future__ import annotations

from procs import base_env, client, free_port, start_runq, start_worker, wait_until


def test_prefetching_and_plain_workers_finish_a_batch_together(tmp_path):
    port = free_port()
    env = base_env(tmp_path, port)
    runq = start_runq(tmp_path, port=port, env=env)
    workers = [start_worker(tmp_path, port, env=env, name=f"pre{i}", args=("--prefetch", "4")) for i in range(2)]
    workers.append(start_worker(tmp_path, port, env=env, name="plain"))
    c = client(port, env)
    try:
        wait_until(lambda: len([w for w in c.request("WorkerList")["workers"] if w["connected"]]) == 3, 30,
                   what="three workers connected")
        reply = c.request("StartBatch", name="p", engine="dummy", n_runs=60,
                          param={"step_count": 2, "step_delay": 0.01})
        assert reply["status"] == "ok", reply
        batch_id = reply["batch_id"]
        wait_until(lambda: c.request("BatchStatus", batch_id=batch_id, limit=0)["batch"]["state"] == "done", 60,
                   what="the batch done")
        page = c.request("BatchStatus", batch_id=batch_id, limit=100)
        assert [r["state"] for r in page["runs"]] == ["finished"] * 60
        assert {r["attempt"] for r in page["runs"]} == {1}, "no run was lost or requeued"
        done_by = {r["worker_id"] for r in page["runs"]}
        assert len(done_by) >= 2, done_by
        for w in workers:
            assert w.alive(), w.log()
    finally:
        c.close()
        for w in workers:
            w.stop()
        assert runq.stop() == 0, runq.log()
