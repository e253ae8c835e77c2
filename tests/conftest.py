"""Shared fixtures: small generated worlds, a real Redis, MLflow in a temp SQLite file."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import redis
import yaml

from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec
from feature_repo.next_app.world import generate_events

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


def copy_feature_repo(root: Path, **split: int) -> Path:
    """A copy of the feature repo under `root` whose next_app split is overridden (smaller worlds)."""
    repo = root / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    spec_path = repo / "next_app" / "model.yaml"
    raw_spec = yaml.safe_load(spec_path.read_text())
    raw_spec["split"].update(split)
    spec_path.write_text(yaml.safe_dump(raw_spec))
    return repo


SERVED_REDIS_URL = REDIS_TEST_URL.rsplit("/", 1)[0] + "/14"  # its own db: e2e writes to db 15


def build_champion(settings: Settings, spec: ModelSpec, raw: pd.DataFrame) -> None:
    """Ingest, features, apply, train, alias the model champion, materialize."""
    from pipelines.feast_ops import apply_repo, materialize
    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame
    from pipelines.training import train_use_case
    from registry import lifecycle

    ingest_frame(raw, spec.event_log, settings.events_dir(spec.name), settings.user_hash_secret)
    compute_feature_tables(settings, spec)
    apply_repo(settings, spec.name)
    trained = train_use_case(settings, spec)
    # Tests need a champion, not a gate decision on a world this small.
    lifecycle.Registry(settings.tracking_uri).set_alias(spec.registered_model_name,
                                                        lifecycle.CHAMPION, trained.version)
    materialize(settings, spec.name)


@dataclass(frozen=True)
class ServedWorld:
    """A trained, promoted and materialized world in a real Redis, for serving tests."""

    settings: Settings
    spec: ModelSpec
    raw: pd.DataFrame  # raw events (raw user ids)
    at: pd.Timestamp  # a request time just after the world's end: online features are fresh

    def users(self, n: int) -> list[str]:
        """The n busiest raw user ids."""
        return self.raw["user_id"].value_counts().index[:n].tolist()


@pytest.fixture(scope="session")
def served_world(tmp_path_factory: pytest.TempPathFactory) -> ServedWorld:
    """30 users x 49 days: ingested, features, applied, trained, promoted, materialized (Redis)."""
    from feastflow.spec import load_spec

    client = redis.Redis.from_url(SERVED_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as e:
        raise RuntimeError(f"the tests need a Redis server at {SERVED_REDIS_URL}") from e
    client.flushdb()
    root = tmp_path_factory.mktemp("served")
    repo = copy_feature_repo(root, max_train_events=2500, max_holdout_events=400)
    settings = Settings(home=root / "var", feature_repo=repo, profile="redis",
                        redis_url=SERVED_REDIS_URL, user_hash_secret="served-secret")
    spec = load_spec("next_app", repo)
    raw = generate_events(users=30, days=49, seed=3)
    build_champion(settings, spec, raw)
    at = pd.Timestamp(raw["timestamp"].max()).tz_convert("UTC").floor("h") + pd.Timedelta(hours=1)
    return ServedWorld(settings, spec, raw, at)


def raw_events(spec: ModelSpec, settings: Settings, **world: int) -> pd.DataFrame:
    """A use case's raw events: its generator's world (sized by `world`) or its loaded data set."""
    from feastflow.plugins import use_case_function

    if spec.generator is not None:
        return use_case_function(spec, spec.generator.module, spec.generator.function)(**world)
    return use_case_function(spec, spec.loader.module, spec.loader.function)(settings.data_dir)


def feast_hashes(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash of Feast's online layout in a Redis database (the engine's own keys left out)."""
    from feastflow.engine import ENGINE_KEY_PREFIX

    return {key: client.hgetall(key) for key in client.scan_iter(count=1000)
            if not key.startswith(ENGINE_KEY_PREFIX)}
