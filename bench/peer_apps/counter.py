"""What every peer's no-op task does: count itself done (one INCR), or record its start latency.

The peers count completions in Redis because they keep no per-batch counter of their own;
simx's runq counts them itself.  So each peer task pays one Redis round trip (tens of µs)
that a simx run does not: the peers' figures are a little pessimistic, never optimistic.
"""
import os
import time

import redis

PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
_r = None


def conn():
    global _r
    if _r is None:
        _r = redis.Redis(host="127.0.0.1", port=PORT)
    return _r


def done():
    conn().incr("bench:done")


def started(sent_ns: int):
    conn().rpush("bench:lat", time.monotonic_ns() - sent_ns)
