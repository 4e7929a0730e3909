"""Framing and message validation (pure)."""
import json
import struct

import pytest

from runq import protocol
from runq.protocol import FrameReader, ProtocolError


def test_frame_length_counts_bytes_not_characters():
    msg = protocol.message("StartBatch", name="Verkehrsfluß 東京 🚦", engine="dummy", n_runs=1)
    frame = protocol.encode(msg)
    (n,) = struct.unpack(">I", frame[:4])
    assert n == len(frame) - 4 > len(json.dumps(msg, ensure_ascii=False))
    assert [protocol.decode_message(b) for b in FrameReader().feed(frame)] == [msg]


def test_reader_reassembles_frames_split_anywhere():
    frames = b"".join(protocol.encode(protocol.message("Ping")) for _ in range(3))
    reader, got = FrameReader(), []
    for i in range(len(frames)):
        got += reader.feed(frames[i:i + 1])
    assert len(got) == 3


def test_oversized_frame_is_refused_from_its_header():
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameReader().feed(struct.pack(">I", protocol.MAX_FRAME + 1))


@pytest.mark.parametrize("body, complaint", [
    (b"\xff\xfe", "not UTF-8 JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"type":"Nope"}', "unknown message type"),
    (b'{"type":"BatchStatus"}', "missing field 'batch_id'"),
    (b'{"type":"BatchStatus","batch_id":"1"}', "'batch_id' has the wrong type"),
    (b'{"type":"BatchStatus","batch_id":true}', "'batch_id' has the wrong type"),
    (b'{"type":"Ping","x":1}', "unknown field 'x'"),
])
def test_bad_messages_name_what_is_wrong(body, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        protocol.decode_message(body)


def test_optional_fields_may_be_absent_and_nullable_ones_null():
    protocol.message("WorkerReconnect", worker_id=1, host="h", pid=1, group="", user="", engine="e", cost=1,
                     speed=1, priority=0)
    protocol.message("WorkerReconnect", worker_id=1, host="h", pid=1, group="", user="", engine="e", cost=1,
                     speed=1, priority=0, proof=None, batch_id=None, batch_index=None, attempt=None)
    protocol.message("Hello", version=2, role="client", nonce="00")
    protocol.message("StartBatch", engine="e", n_runs=2, time_limit=1.5)
