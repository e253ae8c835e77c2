"""Shared fixtures: small generated worlds, a real Redis, MLflow in a temp SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import redis

from feastflow.settings import Settings
from pipelines.generate import generate_events

REDIS_TEST_URL = os.environ.get("FEASTFLOW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a test home (embedded profile unless overridden)."""
    return Settings(home=home, **overrides)


@pytest.fixture(scope="session")
def small_events() -> pd.DataFrame:
    """40 simulated users over 35 days (deterministic)."""
    return generate_events(users=40, days=35, seed=11)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Embedded-profile settings in a fresh home."""
    return make_settings(tmp_path / "home")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis server (db 15, flushed): the integration tests never use a fake."""
    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        raise RuntimeError(
            f"the tests need a Redis server at {REDIS_TEST_URL}: start one (see .ci/run)"
        ) from e
    client.flushdb()
    return REDIS_TEST_URL
