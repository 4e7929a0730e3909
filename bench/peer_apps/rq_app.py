"""RQ: SimpleWorker (no fork per job).  rq worker -w rq.worker.SimpleWorker --url redis://... bench"""
import counter
from redis import Redis
from rq import Queue

queue = None


def _queue():
    global queue
    if queue is None:
        queue = Queue("bench", connection=Redis(host="127.0.0.1", port=counter.PORT))
    return queue


def noop(i):
    counter.done()


def lat(sent_ns):
    counter.started(sent_ns)


def enqueue_many(n, chunk=1000):
    # Queue.enqueue_many in a pipeline: RQ's bulk API
    q = _queue()
    for start in range(0, n, chunk):
        with q.connection.pipeline() as pipe:
            q.enqueue_many([Queue.prepare_data(noop, (i,), result_ttl=0) for i in range(start, min(n, start + chunk))],
                           pipeline=pipe)
            pipe.execute()


def enqueue_one(sent_ns):
    _queue().enqueue(lat, sent_ns, result_ttl=0)
