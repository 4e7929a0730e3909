"""Who is talking, and the one place an error becomes a reply.

Every connection opens with Hello and Auth (simx/auth.py ``Gate``); after that its role
(worker or client) decides which messages it may send and in which terms it is refused: a
worker gets ``RunqError`` and is closed, a client an error ``Reply`` and stays open, a
peer that never authenticated an error in the terms of what it sent, then the close.
"""
from __future__ import annotations

import logging

from simx import auth, protocol
from .errors import RunqError

log = logging.getLogger("runq.coordinator")


class Peers:
    def __init__(self, coord, secrets: auth.Secrets):
        self.c = coord
        self.gate = auth.Gate(secrets, coord.instance)   # each connection's handshake
        self.addresses: dict[object, str] = {}           # conn -> the peer's address
        self.workerish: set = set()                      # sent a worker message (before or after Auth)

    def connected(self, conn, peer: str) -> None:
        self.addresses[conn] = peer

    def address(self, conn, default: str = "") -> str:
        return self.addresses.get(conn, default)

    def role_of(self, conn) -> str | None:
        return self.gate.role_of(conn)

    def forget(self, conn) -> None:
        self.addresses.pop(conn, None)
        self.workerish.discard(conn)
        self.gate.forget(conn)

    def handle(self, conn, msg: dict, now: float) -> None:
        mtype = msg["type"]
        if conn in self.gate.refused:
            return
        from_worker = mtype in protocol.FROM_WORKER
        if from_worker:
            self.workerish.add(conn)
        role = self.role_of(conn)
        try:
            if mtype in ("Hello", "Auth"):
                challenge = self.gate.opening(conn, msg)
                if challenge is not None:
                    self.c.send(conn, protocol.message("RunqChallenge", **challenge), free=True)
            elif role is None:
                state = self.gate.states.get(conn)
                raise RunqError(f"{mtype} before authentication: runq speaks protocol {protocol.VERSION}, which "
                                "opens with Hello and Auth" if state is None else
                                f"{mtype} before Auth", 426 if state is None else 401)
            elif from_worker != (role == "worker"):
                raise RunqError(f"{mtype} is not allowed on a {role} connection "
                                f"(the {role} secret allows only {role} messages)", 403)
            elif role == "worker":
                self.c.conversation.handle(conn, msg, now)
            else:
                self.c.commands.handle(conn, msg, now)
        except auth.AuthError as exc:
            log.warning("%s from %s refused: %s", mtype, self.addresses.get(conn), exc)
            self.gate.refused.add(conn)
            self.c.send(conn, protocol.message("RunqError", message=str(exc), code=exc.code), free=True)
            self.c.send(conn, None, free=True)
        except RunqError as exc:
            log.warning("%s from %s refused: %s", mtype, self.addresses.get(conn), exc)
            if role == "client" or (role is None and not from_worker):
                self.c.send(conn, protocol.reply("error", exc.code, str(exc)), free=True)
                if role is None:
                    self.gate.refused.add(conn)
                    self.c.send(conn, None, free=True)
            else:
                self.c.send(conn, protocol.message("RunqError", message=str(exc), code=exc.code), free=True)
                self.c.send(conn, None, free=True)

    def bad_frame(self, conn, problem: str) -> None:
        if conn in self.workerish or self.role_of(conn) == "worker":
            error = protocol.message("RunqError", message=problem)
        else:
            error = protocol.reply("error", 400, problem)
        self.c.send(conn, error, free=True)
        self.c.send(conn, None, free=True)

    def unsendable(self, conn, msg: dict, problem: str) -> None:
        log.error("not sending %s to %s: %s", msg.get("type"), self.addresses.get(conn), problem)
        if msg.get("type") == "Reply":   # a client waits for an answer: it gets one that fits
            self.c.send(conn, protocol.reply("error", 413, f"the reply would exceed {protocol.MAX_FRAME} bytes; "
                                                           "ask for less (a smaller limit)"), free=True)
