"""The tests' one waiting helper (tests/waiting.py): no servers."""

from __future__ import annotations

import asyncio

import pytest

from tests.waiting import NotYet, until, until_sync


def test_until_sync_returns_the_first_truthy_value_and_retries_listed_errors():
    looks = []

    def check():
        looks.append(1)
        if len(looks) < 3:
            raise KeyError("restarting")
        return len(looks) >= 5 and "ready"

    assert until_sync(check, "ready", every_s=0.001, retry_on=(KeyError,)) == "ready"
    assert len(looks) == 5


def test_until_sync_names_what_and_the_last_value_at_the_deadline():
    with pytest.raises(NotYet, match=r"the queue is empty: still not so after 0 s \(last value 0\)"):
        until_sync(lambda: 0, "the queue is empty", timeout_s=0.01, every_s=0.001)


async def test_until_awaits_a_coroutine_check_and_reports_its_last_error():
    async def ready():
        await asyncio.sleep(0)
        return {"status": "ok"}

    assert await until(ready, "ready") == {"status": "ok"}

    async def failing():
        raise ValueError("no leader")

    with pytest.raises(NotYet, match="last error ValueError: no leader"):
        await until(failing, "elected", timeout_s=0.01, every_s=0.001, retry_on=(ValueError,))
    with pytest.raises(ValueError):  # errors not listed are not swallowed
        await until(failing, "elected", timeout_s=0.01)
