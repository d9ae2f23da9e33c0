"""The in-process cache of authenticated principals: TTL, token expiry, size bound."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from parley.api.auth import Principal, PrincipalCache


def principal(user: str = "u") -> Principal:
    return Principal(
        token_id="t", user_id=user, scope="organization", org_ids=frozenset({"o"}), home_org_id="o", can_write=True
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_the_ttl_only() -> None:
    clock = Clock()
    cache = PrincipalCache(ttl=5, clock=clock)
    cache.put("d", principal(), None)
    clock.now += 4.9
    assert cache.get("d") == principal()
    clock.now += 0.2
    assert cache.get("d") is None  # a revoked token stops working within the TTL


def test_a_token_expiring_sooner_than_the_ttl_is_not_kept_past_its_expiry() -> None:
    clock = Clock()
    cache = PrincipalCache(ttl=60, clock=clock)
    cache.put("soon", principal(), datetime.now(UTC) + timedelta(seconds=1))
    clock.now += 2
    assert cache.get("soon") is None
    cache.put("gone", principal(), datetime.now(UTC) - timedelta(seconds=1))
    assert cache.get("gone") is None


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    cache = PrincipalCache(ttl=5, max_entries=2, clock=Clock())
    cache.put("a", principal("a"), None)
    cache.put("b", principal("b"), None)
    cache.put("c", principal("c"), None)
    assert cache.get("a") is None
    assert cache.get("b") == principal("b")
    assert cache.get("c") == principal("c")


def test_a_zero_ttl_disables_caching() -> None:
    cache = PrincipalCache(ttl=0, clock=Clock())
    cache.put("d", principal(), None)
    assert cache.get("d") is None


async def test_requests_that_miss_together_share_one_lookup_even_if_the_first_leaves() -> None:
    cache = PrincipalCache(ttl=5, clock=Clock())
    calls = 0
    release = asyncio.Event()

    async def look_up() -> Principal:
        nonlocal calls
        calls += 1
        await release.wait()
        cache.put("d", principal(), None)
        return principal()

    first = asyncio.create_task(cache.shared("d", look_up))
    others = [asyncio.create_task(cache.shared("d", look_up)) for _ in range(9)]
    await asyncio.sleep(0)
    first.cancel()  # its client left: the lookup goes on for the others
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*others) == [principal()] * 9
    assert calls == 1
    assert first.cancelled()
    # Once done, the next miss looks up again (the entry is what spares it, not the shared task).
    cache.clear()
    assert await cache.shared("d", look_up) == principal()
    assert calls == 2
