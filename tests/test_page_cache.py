"""Cheap big pages (issue 10): runweb keeps serialized pages, bounded by bytes, and serves one
only when runq confirms on that request that the batch has not changed (and that the asker may
see it); ETag and If-None-Match give 304.  Real runq, gunicorn runweb and workers on loopback."""
import json

import pytest
import yaml

import procs
from runweb import auth, media, users
from runweb.page_cache import PageCache
from test_runweb_roles import ANN, BOB

JSON = {"Accept": "application/json"}


# --- the cache alone ---------------------------------------------------------------------

def test_the_cache_is_bounded_by_bytes_and_drops_the_least_recently_used():
    cache = PageCache(100)
    cache.put("a", 1, b"x" * 40)
    cache.put("b", 1, b"y" * 40)
    assert cache.get("a") == (1, b"x" * 40)          # a is now the most recently used
    cache.put("c", 2, b"z" * 40)                     # 120 bytes: b goes
    assert cache.get("b") is None and cache.get("a") and cache.get("c") and cache.size == 80
    cache.put("a", 3, b"w" * 10)                     # replaced, not added
    assert cache.get("a") == (3, b"w" * 10) and cache.size == 50
    cache.put("big", 1, b"q" * 101)                  # larger than the whole budget: not kept
    assert cache.get("big") is None and cache.size == 50
    off = PageCache(0)
    off.put("a", 1, b"x")
    assert off.get("a") is None and len(off) == 0


@pytest.mark.parametrize("media_type", [media.JSON, media.YAML])
def test_a_page_splits_into_header_and_rest_with_the_same_text(media_type):
    head = {"status": "ok", "message": "it's ok", "batch": {"id": 1, "name": "é\nx", "param": {"a": [1, None]}}}
    rest = {"runs": [{"batch_index": i, "message": "unknown 'x': y", "result": {"v": i / 3}} for i in range(3)],
            "offset": 0, "limit": 3, "next_offset": None}
    whole = media.dump_yaml({**head, **rest}).encode() if media_type == media.YAML \
        else json.dumps({**head, **rest}, ensure_ascii=False).encode()
    assert media.head_of(head, media_type) + media.rest_of(rest, media_type) == whole


# --- through runweb ----------------------------------------------------------------------

@pytest.fixture
def stack(tmp_path):
    users_file = tmp_path / "users.yaml"
    users.write_users(users_file, {"ann": {"password": auth.hash_password("ann-pw"), "admin": False},
                                   "bob": {"password": auth.hash_password("bob-pw"), "admin": False}})
    runq = procs.start_runq(tmp_path)
    web = None
    try:
        port = procs.free_port()
        env = procs.base_env(tmp_path, runq.port, RUNWEB_PORT=port, RUNWEB_USERS=users_file)
        web = procs.start_runweb(tmp_path, runq.port, port=port, env=env, workers=1)   # one cache
        yield tmp_path, runq, web
    finally:
        if web is not None:
            web.stop()
        runq.stop()


def test_a_kept_page_is_never_stale_and_an_unchanged_one_gets_304(stack):
    tmp, runq, web = stack
    status, _, reply = procs.http("POST", f"{web.url}/batch/new",
                                  {"engine": "dummy", "n_runs": 3, "param": {"step_count": 0}}, headers=ANN)
    assert status == 201
    page = f"{web.url}/batch/{reply['batch_id']}"
    for accept in (JSON, {}):   # a page kept in JSON and one in YAML
        status, head, first = procs.http("GET", page, headers={**ANN, **accept})
        assert status == 200 and [r["state"] for r in first["runs"]] == ["waiting"] * 3
        assert head["etag"] and head["cache-control"] == "no-cache"
        again = procs.http("GET", page, headers={**ANN, **accept})[2]
        assert again["runs"] == first["runs"] and again["batch"]["elapsed"] >= first["batch"]["elapsed"]
    # the runs finish: once runq says so, the very next GET shows it (never the kept page)
    worker = procs.start_worker(tmp, runq.port)
    try:
        c = procs.client(runq.port)
        procs.wait_until(lambda: c.request("BatchStatus", batch_id=reply["batch_id"], limit=0)["batch"]["end_time"],
                         20, what="the batch to end in runq")
        c.close()
    finally:
        worker.stop()
    for accept in (JSON, {}):
        status, head, now = procs.http("GET", page, headers={**ANN, **accept})
        assert status == 200 and [r["state"] for r in now["runs"]] == ["finished"] * 3, now["runs"]
    # an ended batch does not change: 304 for its ETag, 200 for another
    status, head, _ = procs.http("GET", page, headers={**ANN, **JSON})
    etag = head["etag"]
    status, head, body = procs.http("GET", page, headers={**ANN, **JSON, "If-None-Match": etag})
    assert (status, head["etag"], body) == (304, etag, None)
    assert procs.http("GET", page, headers={**ANN, **JSON, "If-None-Match": f'"x", W/{etag}'})[0] == 304
    assert procs.http("GET", page, headers={**ANN, **JSON, "If-None-Match": '"0-0"'})[0] == 200
    assert procs.http("GET", page, headers={**ANN, "If-None-Match": etag})[0] == 200   # the YAML page's differs


def test_a_kept_page_of_another_users_batch_is_still_404(stack):
    _, _, web = stack
    reply = procs.http("POST", f"{web.url}/batch/new", {"engine": "dummy", "n_runs": 2, "param": {}}, headers=ANN)[2]
    page = f"{web.url}/batch/{reply['batch_id']}"
    status, head, _ = procs.http("GET", page, headers={**ANN, **JSON})   # now kept by runweb
    assert status == 200
    for headers in ({**BOB, **JSON}, {**BOB, **JSON, "If-None-Match": head["etag"]}, BOB):
        status, _, body = procs.http("GET", page, headers=headers)
        assert status == 404, (headers, body)


def test_callers_of_a_page_being_filled_wait_for_it_instead_of_filling_it_again():
    import threading
    cache = PageCache(1000)
    assert cache.get_or_lead("k") == (None, True)           # the first fills it
    got = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_lead("k")))
    waiter.start()
    procs.wait_until(lambda: waiter.is_alive(), 5)
    cache.put("k", 3, b"page")
    cache.landed("k")
    waiter.join(5)
    assert got == [((3, b"page"), False)]
    cache.landed("k")                                        # harmless twice
    assert cache.get_or_lead("other", timeout=0.01) == (None, True)
    assert cache.get_or_lead("other", timeout=0.01) == (None, False)   # the filler never came back: ask anyway
    assert PageCache(0).get_or_lead("k") == (None, False)    # no cache: nobody waits
