"""Helpers of the distributed failure tests: a failure must reach every rank well before the group's timeout."""

from __future__ import annotations

import time

import pytest

from hardbatch.errors import DataError

#: Seconds a gloo collective of these tests waits for the other ranks; each failure must arrive well within it.
TIMEOUT = 20


def promptly(error, match, call) -> None:
    """``call()`` raises ``error`` matching ``match`` in under half of :data:`TIMEOUT`."""
    started = time.perf_counter()
    with pytest.raises(error, match=match):
        call()
    assert time.perf_counter() - started < TIMEOUT / 2, "the failure arrived only near the timeout"


def failing(message):
    """A stand-in that raises a DataError (``message`` starting with "row") or a RuntimeError."""

    def fail(*args, **kwargs):
        raise DataError(message) if message.startswith("row") else RuntimeError(message)

    return fail
