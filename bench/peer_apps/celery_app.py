"""celery: Redis broker, results ignored.  celery -A celery_app worker -c N -P prefork --without-gossip ..."""
from celery import Celery

import counter

app = Celery("bench", broker=f"redis://127.0.0.1:{counter.PORT}/0")
app.conf.update(task_ignore_result=True, worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, task_acks_late=False)


@app.task
def noop(i):
    counter.done()


@app.task
def lat(sent_ns):
    counter.started(sent_ns)


def enqueue_many(n):
    # one producer (connection and channel) reused for every message: celery's fastest way to send many
    with app.producer_or_acquire() as producer:
        for i in range(n):
            noop.apply_async((i,), producer=producer)


def enqueue_one(sent_ns):
    lat.apply_async((sent_ns,))
