"""runq's bytes into the worker's messages: frames split, JSON parsed, every message validated.

Bytes from the network are hostile here as they are in runq: a frame header is bounded
before its body is awaited, and a message is handed on only if ``protocol.check`` would
accept it.  What is cheaper than ``protocol.decode_message`` is the way there, for the two
messages every run brings (RunqAck, RunqAssignRun):

* frames are cut out of what one recv() returned, without a buffer in between unless a
  frame spans two reads;
* JSON is parsed by the decoder's scanner itself (``protocol._DECODER``: NaN, Infinity and
  non-finite numbers refused as everywhere), skipping the wrapper's two regex matches;
* every message from runq is checked first by ``QUICK``: protocol's own compiled quick check
  of its declaration (``protocol.Message.quick``: exact field sets, the bounds of its
  ``Kind``s, a param of plain values).  Anything it doubts (an odd value, leading or
  trailing whitespace, any doubt) goes through ``protocol.check``, which accepts or names
  the problem.

tests/test_worker_wire.py holds the two paths to the same verdicts.
"""
from __future__ import annotations

from simx import protocol

_scan = protocol._DECODER.scan_once  # the one decoder's scanner: the same hooks (finite numbers only)
_HEADER = protocol.HEADER

# type -> a test that only ever says True of a message protocol.check accepts: what runq sends
QUICK = {m.name: m.quick for m in protocol.DECLARATIONS if m.sender in (protocol.RUNQ, protocol.EITHER)}


def decode(body: bytes) -> dict:
    """One valid message from a frame body, or ProtocolError naming what is wrong."""
    try:
        text = body.decode("utf-8")
        msg, end = _scan(text, 0)
    except (UnicodeDecodeError, ValueError, StopIteration, RecursionError):
        return protocol.decode_message(body)   # says what is wrong (or accepts leading whitespace)
    if end != len(text) or type(msg) is not dict:
        return protocol.decode_message(body)
    mtype = msg.get("type")
    quick = QUICK.get(mtype) if type(mtype) is str else None
    if quick is not None and quick(msg):
        return msg
    return protocol.check(msg)


class Inbox:
    """Incremental: ``feed(data)`` returns the messages completed and the problems of the frames
    that were not valid messages (skipped).  A header announcing more than ``max_frame`` bytes
    raises ProtocolError: the stream cannot be followed past it."""

    def __init__(self, max_frame: int = protocol.MAX_FRAME):
        self.max_frame = max_frame
        self.buf = bytearray()   # the start of a frame that spans reads
        self.need = 0            # bytes buf must hold before a frame can complete

    def feed(self, data: bytes) -> tuple[list[dict], list[str]]:
        if self.buf:
            self.buf += data
            if len(self.buf) < self.need:
                return [], []
            data = bytes(self.buf)
            self.buf.clear()
        messages, problems = [], []
        pos, size = 0, len(data)
        while size - pos >= 4:
            (n,) = _HEADER.unpack_from(data, pos)
            if n > self.max_frame:
                raise protocol.ProtocolError(f"frame of {n} bytes exceeds the {self.max_frame}-byte limit")
            end = pos + 4 + n
            if end > size:
                break
            try:
                messages.append(decode(data[pos + 4:end]))
            except protocol.ProtocolError as exc:
                problems.append(str(exc))
            pos = end
        if pos < size:
            self.buf += data[pos:] if pos else data
            self.need = 4
            if len(self.buf) >= 4:   # the header is known (and was bounded above): await the whole frame
                self.need += _HEADER.unpack_from(self.buf)[0]
        return messages, problems
