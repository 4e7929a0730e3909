"""dramatiq: RedisBroker, no results.  dramatiq dramatiq_app -p N -t 1"""
import dramatiq
from dramatiq.brokers.redis import RedisBroker

import counter

broker = RedisBroker(host="127.0.0.1", port=counter.PORT)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop(i):
    counter.done()


@dramatiq.actor(max_retries=0)
def lat(sent_ns):
    counter.started(sent_ns)


def enqueue_many(n):
    # dramatiq has no bulk enqueue: group() sends one message at a time; this is the same loop
    for i in range(n):
        noop.send(i)


def enqueue_one(sent_ns):
    lat.send(sent_ns)
