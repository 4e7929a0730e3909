"""Errors raised in runq's core; each carries the HTTP-like status the edges translate it to."""


class RunqError(Exception):
    code = 500

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class BadRequest(RunqError):
    code = 400


class NotFound(RunqError):
    code = 404


class Conflict(RunqError):
    code = 409


class Forbidden(RunqError):
    code = 403


class UploadRefused(Exception):
    """A chunk or a manifest runq will not take; the message says why (it ends the attempt)."""
