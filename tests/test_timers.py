"""Timers by deadline (issue 10): leases, grace, time limits, contact writes and retention
fire when due, and a tick costs O(due), not O(fleet).  The coordinator is driven with `now`."""
import math

from runq.core.output import Output

from simx.config import RunqConfig
from runq.core.timers import Timers
from test_coordinator import MEMORY, Harness, start


def test_timers_fire_in_deadline_order_once_and_stale_ones_never():
    t = Timers()
    t.set("lease", 1, 30.0)
    t.set("grace", 2, 10.0)
    t.set("lease", 3, 20.0)
    t.set("lease", 1, 5.0)          # replaced: the entry for 30 is stale
    t.cancel("lease", 3)
    t.set_earliest("grace", 2, 50.0)  # later than it is: kept at 10
    assert t.next_deadline() == 5.0
    assert list(t.due(4.9)) == []
    assert list(t.due(10.0)) == [("lease", 1), ("grace", 2)]
    assert list(t.due(math.inf)) == [] and len(t) == 0


def test_a_handler_may_arm_a_timer_due_in_the_same_pass():
    t = Timers()
    t.set("a", 1, 1.0)
    fired = []
    for kind, key in t.due(5.0):
        fired.append((kind, key))
        if kind == "a":
            t.set("b", 2, 2.0)
    assert fired == [("a", 1), ("b", 2)]


def test_lease_fires_by_deadline_and_each_word_from_the_worker_pushes_it_back(tmp_path):
    h = Harness(MEMORY, cfg=RunqConfig(heartbeat_interval=10, lease=30, grace=60))
    wid = h.worker("w")
    start(h, 2)
    assign = h.assigned("w")[-1]
    h.tick(20)
    h.heartbeat("w", wid, assign)                 # t+20: the lease now ends at t+50
    h.tick(11)                                    # t+31: the first deadline fires and finds it renewed
    assert not h.to("w", "RunqAbortRun")
    h.tick(18)                                    # t+49
    assert not h.to("w", "RunqAbortRun")
    h.tick(2)                                     # t+51: silent for 31 s
    assert [m["reason"] for m in h.to("w", "RunqAbortRun")] == ["worker lease expired"]


def test_time_limit_and_grace_fire_by_deadline(tmp_path):
    h = Harness(MEMORY, cfg=RunqConfig(heartbeat_interval=10, lease=30, grace=60))
    w1 = h.worker("w1")
    start(h, 1, time_limit=25)
    a1 = h.assigned("w1")[-1]
    w2 = h.worker("w2")
    start(h, 1)
    h._run(h.coord.disconnected("w2", h.now))     # w2 holds batch 2's run: its grace ends at t+60
    h.tick(24)
    h.heartbeat("w1", w1, a1)
    assert not h.to("w1", "RunqAbortRun")
    h.tick(2)                                     # t+26: over its 25 s limit
    assert "time limit of 25" in h.to("w1", "RunqAbortRun")[-1]["reason"]
    assert h.batch(2)["runs"][0]["state"] == "running"
    h.tick(33)                                    # t+59: still within grace
    assert h.batch(2)["runs"][0]["state"] == "running"
    h.tick(2)                                     # t+61
    assert h.batch(2)["runs"][0]["state"] == "waiting"
    assert w2 in h.coord.workers and h.coord.workers[w2].state == "gone"


def test_a_quiet_fleet_of_10000_costs_a_tick_only_what_is_due(tmp_path):
    """10,000 idle connected workers: ticks pop nothing until contact writes fall due, and then
    exactly one entry per worker that spoke (work counted, not time)."""
    h = Harness(MEMORY, cfg=RunqConfig(heartbeat_interval=10, lease=30, grace=60))
    n = 10_000
    for i in range(n):
        h.worker(f"w{i}")
    timers = h.coord.timers
    for _ in range(20):                           # 10 s of ticks, every half second, nobody speaking
        before = timers.popped
        h.tick(0.5)
        assert timers.popped - before == 0
    for i in range(3):                            # three of them heartbeat
        h.send(f"w{i}", "WorkerHeartbeat", worker_id=i + 1, seq=0, runs=[])
    assert not h.store.pending()                  # a heartbeat writes nothing itself
    before = timers.popped
    h.coord.tick(h.now + 0.5)                     # their last_contact writes are due (last written 10 s ago)
    assert timers.popped - before == 3
    assert set(h.store._dirty["workers"]) == {1, 2, 3}
    h.store.commit()
    before = timers.popped
    for _ in range(10):
        h.tick(0.5)
    assert timers.popped - before == 0


def test_a_retry_backoff_is_a_timer_in_the_one_deadline_heap(tmp_path):
    """A transient failure's backoff is a ("retry", run) deadline among the others: the
    coordinator's next deadline is the run's retry time, and it fires then, not before."""
    h = Harness(MEMORY, cfg=RunqConfig(heartbeat_interval=10, lease=30, grace=60))
    wid = h.worker("w")
    start(h, 1, max_attempts=3)
    failed_at = h.now
    h.report("w", wid, h.assigned("w")[-1], "WorkerFailedRun", kind="transient")   # backoff: 1 s
    assert h.coord.timers.when("retry", (1, 0)) == failed_at + 1.0
    assert h.coord.next_deadline() == failed_at + 1.0
    h.tick(0.999)
    assert len(h.assigned("w")) == 1
    h.tick(0.001)                                 # at its deadline
    assert len(h.assigned("w")) == 2
    assert h.coord.timers.when("retry", (1, 0)) is None


def test_contact_writes_fall_on_shared_slots_and_write_last_contact_only(tmp_path):
    """Heartbeats of a fleet within one slot are written in one tick, each as its last_contact only."""
    h = Harness(MEMORY, cfg=RunqConfig(heartbeat_interval=10, lease=30, grace=60))
    ids = [h.worker(f"w{i}") for i in range(3)]
    h.tick(10.2)
    for i, wid in enumerate(ids):
        h.now += 0.2
        h.send(f"w{i}", "WorkerHeartbeat", worker_id=wid, seq=0, runs=[])
    dues = {h.coord.timers.when("contact", wid) for wid in ids}
    assert len(dues) == 1 and dues.pop() == math.ceil(h.now)
    assert not h.store.pending()
    h.coord.tick(math.ceil(h.now))
    assert {k: set(row) for k, (row, _) in h.store._dirty["workers"].items()} == {
        wid: {"id", "last_contact"} for wid in ids}
    h.store.commit()
    rows = {r["id"]: r for r in h.store.reader().worker_rows()}
    assert [rows[wid]["last_contact"] for wid in ids] == [h.coord.workers[wid].last_contact for wid in ids]
    assert all(rows[wid]["state"] == "idle" for wid in ids)   # the rest of the row is untouched


class _Clocked:
    """A coordinator with nothing but timers: counts its ticks."""
    def __init__(self):
        self.due, self.ticks = math.inf, []

    def next_deadline(self):
        return self.due

    def tick(self, now):
        self.ticks.append(now)
        self.due = math.inf
        return Output()

    def committed(self, seconds, purged):
        pass


class _NoStore:
    def pending(self):
        return False

    def commit(self):
        pass

    def take_purged(self):
        return []


def test_the_server_ticks_at_the_coordinators_deadline_and_never_on_a_sweep():
    from runq.server import Server
    now = [5000.0]
    coord = _Clocked()
    server = Server(coord, _NoStore(), [("127.0.0.1", 0)], clock=lambda: now[0])
    try:
        for _ in range(5):                        # nothing due: no tick, however long it waits
            now[0] += 3.0
            server.step(0.0)
        assert coord.ticks == []
        coord.due = now[0] + 1.0
        server.step(0.0)
        assert coord.ticks == []                  # not yet
        now[0] += 1.0
        server.step(0.0)
        assert coord.ticks == [now[0]]            # at its deadline, once
        now[0] += 10.0
        server.step(0.0)
        assert len(coord.ticks) == 1
    finally:
        server.close()
