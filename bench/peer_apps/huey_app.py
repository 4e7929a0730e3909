"""huey: RedisHuey (blocking BRPOP dequeue), results off.  huey_consumer huey_app.huey -w N -k process"""
from huey import RedisHuey

import counter

huey = RedisHuey("bench", host="127.0.0.1", port=counter.PORT, results=False)


@huey.task()
def noop(i):
    counter.done()


@huey.task()
def lat(sent_ns):
    counter.started(sent_ns)


def enqueue_many(n):
    noop.map(range(n))    # huey's bulk API (one LPUSH per task)


def enqueue_one(sent_ns):
    lat(sent_ns)
