"""What one call into the core asks of the shell: messages to send, connections to close,
reads to hand to the reader.

``Output`` is a list of ``(conn, message)`` in the order they must leave (a message of None
closes that connection once what precedes it is sent).  Most of them state what this turn
changed, so the shell sends them only after the turn's commit; those in ``free`` (indexes
into the list) depend on no commit (handshakes, errors, Ping, Metrics, login counts) and may
leave even when the commit fails.  ``reads`` are ``(conn, request)`` the reader answers from
committed data, after this turn's commit (so a client's read sees its own earlier changes).
"""
from __future__ import annotations


class Output(list):
    __slots__ = ("free", "reads")

    def __init__(self):
        super().__init__()
        self.free: set[int] = set()
        self.reads: list = []

    def send(self, conn, msg: dict | None, free: bool = False) -> None:
        if conn is None:
            return
        if free:
            self.free.add(len(self))
        self.append((conn, msg))

    def read(self, conn, msg: dict) -> None:
        self.reads.append((conn, msg))
