"""The errors runweb raises about a request.

No HTTP here: validation code raises these without knowing about Falcon, and
``runweb.app`` maps each one to an HTTP status in one table.
"""
from __future__ import annotations

import math


class InvalidRequest(Exception):
    """A request refused before asking runq (bad field, parameter or body); the message names it."""


class BodyTooLarge(Exception):
    """The request body is over runweb.max_body bytes."""


class RequestTimeout(Exception):
    """The client stopped sending its request body."""


class NotAuthenticated(Exception):
    """An untrusted client without valid HTTP basic credentials."""


class ErrorReply(Exception):
    """runq answered with an error Reply; ``code`` is its HTTP-like status."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class TooManyLogins(Exception):
    """Too many failed logins from this address or for this user name lately."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many failed logins; try again in {math.ceil(retry_after)} s")
        self.retry_after = math.ceil(retry_after)


class MisdirectedHost(Exception):
    """A request for a host name runweb does not serve (runweb/hosts.py)."""


class CrossSite(Exception):
    """A state-changing request a browser says comes from another site."""
