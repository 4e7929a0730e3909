"""Matching rules, without sockets: wildcards, tie-breaking, submission order."""
import pytest

from runq.core.matching import Matcher, matches


@pytest.mark.parametrize("batch, worker, expected", [
    (("dummy", "topl", "topl"), ("dummy", "topl", "topl"), True),
    (("dummy", "topl", "topl"), ("dummy", "", ""), True),          # empty worker group/user: wildcard
    (("dummy", "topl", "topl"), ("dummy", "topl", ""), True),
    (("dummy", "topl", "topl"), ("dummy", "", "topl"), True),
    (("dummy", "topl", "topl"), ("aurora", "", ""), False),        # engine must be equal
    (("dummy", "topl", "topl"), ("dummy", "other", ""), False),
    (("dummy", "topl", "topl"), ("dummy", "", "other"), False),
    (("dummy", "", ""), ("dummy", "topl", ""), False),             # a worker's group is not a wildcard for the batch
    (("dummy", "", ""), ("dummy", "", ""), True),
])
def test_rule(batch, worker, expected):
    assert matches(batch, worker) is expected


def idle(m, wid, traits=("dummy", "", ""), cost=1, speed=1, priority=0):
    m.add_idle(wid, traits, cost, speed, priority)


@pytest.mark.parametrize("workers, best", [
    ([(1, 2, 1, 0), (2, 1, 1, 0)], 2),        # lowest cost wins
    ([(1, 1, 1, 0), (2, 1, 3, 0)], 2),        # then highest speed
    ([(1, 1, 1, 0), (2, 1, 1, 5)], 2),        # then highest priority
    ([(1, 1, 1, 0), (2, 1, 1, 0)], 1),        # then the one idle longest
    ([(1, 5, 9, 9), (2, 1, 0, 0)], 2),        # cost dominates speed and priority
])
def test_tie_breaking(workers, best):
    m = Matcher()
    for wid, cost, speed, priority in workers:
        idle(m, wid, cost=cost, speed=speed, priority=priority)
    assert m.take_worker_for(("dummy", "g", "u")) == best


def test_best_worker_across_wildcard_keys():
    m = Matcher()
    idle(m, 1, ("dummy", "g", "u"), cost=3)
    idle(m, 2, ("dummy", "g", ""), cost=2)
    idle(m, 3, ("dummy", "", "u"), cost=1)
    idle(m, 4, ("dummy", "", ""), cost=4)
    idle(m, 5, ("dummy", "h", ""), cost=0)   # wrong group: never
    order = [m.take_worker_for(("dummy", "g", "u")) for _ in range(5)]
    assert order == [3, 2, 1, 4, None]


def test_taken_or_removed_worker_is_not_offered_again():
    m = Matcher()
    idle(m, 1)
    idle(m, 2, cost=5)
    m.remove_idle(1)
    assert m.take_worker_for(("dummy", "", "")) == 2
    assert m.take_worker_for(("dummy", "", "")) is None
    idle(m, 1, cost=9)     # re-added with new traits: only the new entry counts
    idle(m, 1, cost=0)
    assert m.take_worker_for(("dummy", "", "")) == 1
    assert m.idle_count() == 0


def test_batches_in_submission_order_for_each_kind_of_worker():
    m = Matcher()
    m.add_ready(3, ("dummy", "g", "u"))
    m.add_ready(1, ("dummy", "h", "u"))
    m.add_ready(2, ("dummy", "g", "v"))
    m.add_ready(4, ("other", "g", "u"))
    assert m.batch_for(("dummy", "", "")) == 1
    assert m.batch_for(("dummy", "g", "")) == 2
    assert m.batch_for(("dummy", "g", "u")) == 3
    assert m.batch_for(("dummy", "", "u")) == 1
    assert m.batch_for(("dummy", "x", "")) is None
    assert m.batch_for(("other", "", "")) == 4
    m.remove_ready(1)
    assert m.batch_for(("dummy", "", "")) == 2
    m.add_ready(1, ("dummy", "h", "u"))   # a requeued run makes an old batch ready again: it goes first
    assert m.batch_for(("dummy", "", "")) == 1


def test_index_cost_does_not_grow_with_queue_length():
    """Finding a match touches heap heads only: 100,000 non-matching batches ahead
    cost nothing extra for a worker that matches none of them."""
    m = Matcher()
    for b in range(1, 100_001):
        m.add_ready(b, ("dummy", f"g{b}", "u"))
    m.add_ready(200_000, ("dummy", "mine", "u"))
    assert m.batch_for(("dummy", "mine", "")) == 200_000
    assert len(m._owners[("dummy", "mine", None)]) == 1
    assert len(m._batches[(("dummy", "mine", None), "")]) == 1
