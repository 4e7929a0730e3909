"""The fair-share index, as pure units: usage with decay (runq/fairshare.py), owners by rank and
batches by priority in the matcher (runq/matching.py), and the retry delay (runq/retry.py)."""
import math

import pytest

from runq.core.fairshare import FIRST_ESTIMATE, FairShare
from runq.core.matching import Matcher
from runq.core.retry import Backoff

T = ("dummy", "", "")


def index(shares=(), half_life=3600.0):
    fs = FairShare(half_life, shares)
    return fs, Matcher(fs.rank)


# (usage already charged per owner, shares, batches (id, owner, priority), the batch a worker takes)
@pytest.mark.parametrize("usage, shares, batches, first", [
    ({}, {}, [(1, "a", 0), (2, "b", 0)], 1),                          # no usage: ties go in arrival order
    ({"a": 100}, {}, [(1, "a", 0), (2, "b", 0)], 2),                  # b is further below its share
    ({"a": 100, "b": 50}, {"a": 3}, [(1, "a", 0), (2, "b", 0)], 1),   # 100/3 < 50/1
    ({"a": 100, "b": 20}, {"a": 3}, [(1, "a", 0), (2, "b", 0)], 2),   # 100/3 > 20/1
    ({}, {}, [(1, "a", 0), (2, "a", 5)], 2),                          # one owner: higher priority first
    ({}, {}, [(1, "a", 5), (2, "a", 5)], 1),                          # same priority: lower id first
    ({}, {}, [(1, "a", -3), (2, "a", 0)], 2),                         # negative priority goes last
    ({"a": 10}, {}, [(1, "a", 99), (2, "b", -99)], 2),                # priority does not beat fair share
])
def test_which_batch_a_free_worker_takes(usage, shares, batches, first):
    fs, m = index(tuple(shares.items()))
    for owner, seconds in usage.items():
        fs.charge(owner, seconds, 0.0)
    for bid, owner, priority in batches:
        m.add_ready(bid, T, owner, priority)
    assert m.batch_for(T) == first


def test_rerank_moves_an_owner_behind_another():
    fs, m = index()
    m.add_ready(1, T, "a")
    m.add_ready(2, T, "b")
    assert m.batch_for(T) == 1
    fs.charge("a", 5, 0.0)
    m.rerank("a")
    assert m.batch_for(T) == 2
    fs.charge("b", 10, 0.0)
    m.rerank("b")
    assert m.batch_for(T) == 1


def test_removed_batches_and_owners_leave_the_index():
    fs, m = index()
    m.add_ready(1, T, "a")
    m.add_ready(2, T, "a", priority=1)
    m.add_ready(3, T, "b")
    fs.charge("b", 1, 0.0)
    m.rerank("b")
    assert m.batch_for(T) == 2
    m.remove_ready(2)
    assert m.batch_for(T) == 1
    m.remove_ready(1)
    assert m.batch_for(T) == 3 and "a" not in m._owner_keys
    m.remove_ready(3)
    assert m.batch_for(T) is None and m.ready_count() == 0
    m.add_ready(1, T, "a")          # back again after removal
    assert m.batch_for(T) == 1


def test_workers_see_only_owners_with_batches_they_can_take():
    fs, m = index()
    fs.charge("a", 100, 0.0)
    m.add_ready(1, ("dummy", "g1", ""), "a")
    m.add_ready(2, ("dummy", "g2", ""), "b")
    assert m.batch_for(("dummy", "", "")) == 2        # a worker of no group takes either: b is below a
    assert m.batch_for(("dummy", "g1", "")) == 1      # a worker of g1 sees a's batch only
    m.remove_ready(1)
    assert m.batch_for(("dummy", "g1", "")) is None
    assert m.batch_for(("other", "", "")) is None


def test_decay_halves_usage_every_half_life_without_touching_it():
    fs = FairShare(half_life=60.0)
    fs.charge("a", 100, 0.0)
    assert fs.usage("a", 60.0) == pytest.approx(50.0)
    assert fs.usage("a", 120.0) == pytest.approx(25.0)
    fs.charge("b", 40, 120.0)                     # 40 now weighs more than a's old 100
    assert fs.rank("b") > fs.rank("a")


def test_running_runs_count_at_an_estimate_until_they_end():
    fs = FairShare()
    fs.started("r1", "a", 0.0)
    assert fs.usage("a", 0.0) == pytest.approx(FIRST_ESTIMATE)   # a burst raises the rank at once
    fs.started("r2", "a", 0.0)
    assert fs.usage("a", 0.0) == pytest.approx(2 * FIRST_ESTIMATE)
    assert fs.ended("r1", 10.0) == "a"                          # estimate replaced by 10 s
    assert fs.usage("a", 10.0) == pytest.approx(10.0 + FIRST_ESTIMATE, rel=1e-3)
    fs.started("r3", "a", 10.0)                                  # the estimate learned from r1
    assert fs.usage("a", 10.0) > 10.0 + 2 * FIRST_ESTIMATE
    assert fs.ended("unknown", 10.0) is None


def test_renormalize_keeps_usage_and_order():
    fs, m = index(half_life=1.0)
    fs.charge("a", 10, 0.0)
    fs.charge("b", 30, 0.0)
    fs.started("r", "b", 0.0)
    m.add_ready(1, T, "a")
    m.add_ready(2, T, "b")
    now = 50.0                                   # rate * 50 s > RENORM
    assert fs.due(now)
    before = fs.usage("a", now), fs.usage("b", now)
    fs.renormalize(now)
    m.rerank_all()
    assert not fs.due(now)
    assert (fs.usage("a", now), fs.usage("b", now)) == pytest.approx(before)
    assert m.batch_for(T) == 1
    fs.ended("r", now)                           # the charge of a run started before is undone correctly
    assert fs.usage("b", now) >= 0.0 and math.isfinite(fs.rank("b"))


def test_one_dispatch_costs_heap_work_not_a_scan_of_owners_or_batches():
    """10,000 owners with 10 batches each: a dispatch plus a rerank touches O(log n) entries,
    and dead entries never pile up beyond twice the live ones."""
    fs, m = index()
    for o in range(10_000):
        for b in range(10):
            m.add_ready(o * 10 + b, T, f"u{o}", priority=b)
    for step in range(5_000):
        bid = m.batch_for(T)
        owner = f"u{bid // 10}"
        fs.started(step, owner, float(step))
        m.rerank(owner)
    owners = m._owners[("dummy", None, None)]
    assert len(owners) == 10_000 and len(owners.heap) <= 2 * len(owners) + 32
    assert len({m.batch_for(T) for _ in range(3)}) == 1


# (base, cap, failures, delay)
@pytest.mark.parametrize("base, cap, failures, delay", [
    (1, 60, 1, 1), (1, 60, 2, 2), (1, 60, 3, 4), (1, 60, 6, 32), (1, 60, 7, 60), (1, 60, 500, 60),
    (0.2, 60, 1, 0.2), (0, 60, 4, 0),
])
def test_backoff_delay(base, cap, failures, delay):
    assert Backoff(base, cap).delay(failures) == pytest.approx(delay)


@pytest.mark.parametrize("sched, error", [
    ({"shares": {"alice": 3, "bob": 0.5}, "half_life": 60}, None),
    ({"shares": {"alice": 0}}, "sched.shares.alice"),
    ({"shares": {"alice": "lots"}}, "sched.shares.alice"),
    ({"shares": ["alice"]}, "sched.shares: expected a mapping"),
    ({"half_life": 0}, "sched.half_life"),
    ({"backoff_base": -1}, "sched.backoff_base"),
    ({"fairness": 1}, "sched.fairness: unknown key"),
])
def test_sched_settings(tmp_path, sched, error):
    import yaml

    from simx.config import ConfigError, load
    conf = tmp_path / "simx.yaml"
    conf.write_text(yaml.safe_dump({"sched": sched}))
    if error is None:
        cfg = load(conf, env={}).sched
        assert (cfg.share_of("alice"), cfg.share_of("bob"), cfg.share_of("carol"), cfg.half_life) == (3, 0.5, 1, 60)
    else:
        with pytest.raises(ConfigError, match=error):
            load(conf, env={})
