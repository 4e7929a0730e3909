"""A WorkerReconnect claiming a run with batch_id alone (batch_index and attempt are
optional, but all or none: protocol.run_key) is refused before it changes anything."""
import pytest

from simx import protocol
from test_coordinator import MEMORY, Harness


def test_a_half_claim_is_refused_before_the_worker_is_registered(tmp_path):
    h = Harness(MEMORY)
    wid = h.worker("w1")
    workers, last = dict(h.coord.workers), h.coord.last_worker_id
    h.open("w2")
    with pytest.raises(protocol.ProtocolError, match="batch_index and attempt"):
        h.coord.handle("w2", protocol.message("WorkerReconnect", worker_id=wid + 100, host="h", pid=1, group="",
                                              user="", engine="dummy", cost=1.0, speed=1.0, priority=0.0,
                                              batch_id=1), h.now)
    # nothing half done: no worker registered for the connection, no id spent, nothing to commit
    assert h.coord.last_worker_id == last and h.coord.workers.keys() == workers.keys()
    assert "w2" not in h.coord.conns and not h.coord.out and not h.store.pending()
    h.close()
