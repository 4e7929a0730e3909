"""The errors runweb raises about a request.

No HTTP here: validation code raises these without knowing about Falcon, and
``runweb.app`` maps each one to an HTTP status in one table.
"""
from __future__ import annotations


class InvalidRequest(Exception):
    """A request refused before asking runq (bad field, parameter or body); the message names it."""


class BodyTooLarge(Exception):
    """The request body is over runweb.max_body bytes."""


class NotAuthenticated(Exception):
    """An untrusted client without valid HTTP basic credentials."""


class RunqRefused(Exception):
    """runq answered with an error Reply; ``code`` is its HTTP-like status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
