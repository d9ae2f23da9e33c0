"""Fixtures for the infrastructure tests: a throwaway Redis server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisServer
from tests.support.redis import missing as redis_missing


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    reason = redis_missing()
    if reason:
        pytest.fail(reason)
    server = RedisServer().start()
    yield server
    server.destroy()
