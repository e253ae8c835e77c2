"""The production profile end to end on small data: Feast's SQL registry and MLflow on a real
PostgreSQL (a database of this test's own), artifacts in a configured folder, Redis online.

Apply, train, register, promote, materialize, then serve over HTTP: the server loads the
champion from MLflow on PostgreSQL and reads features Feast wrote to Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import REDIS_TEST_URL, build_champion, copy_feature_repo
from test_serving_integration import running

from feastflow.postgres import drop_databases, ensure_databases, feast_registry_url, mlflow_url
from feastflow.settings import Settings
from feastflow.spec import load_spec
from feature_repo.next_app.world import generate_events
from pipelines.demo import free_port
from registry import lifecycle
from serving.settings import ServingSettings

pytestmark = pytest.mark.redis
POSTGRES = os.environ.get("FEASTFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
PRODUCTION_REDIS_URL = REDIS_TEST_URL.rsplit("/", 1)[0] + "/12"  # its own db


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A database of this test on the machine's PostgreSQL (and its _mlflow twin), dropped after."""
    url = f"{POSTGRES}/feastflow_test_{uuid.uuid4().hex[:10]}"
    try:
        created = ensure_databases(url)
    except ConnectionError as e:
        raise RuntimeError(f"the production tests need PostgreSQL at {POSTGRES} (see .ci/run)"
                           ) from e
    assert len(created) == 2
    assert ensure_databases(url) == []  # made once: a second call finds them
    try:
        yield url
    finally:
        drop_databases(url)


def test_production_profile_applies_trains_registers_and_serves(postgres_url: str,
                                                                  tmp_path: Path) -> None:
    redis.Redis.from_url(PRODUCTION_REDIS_URL).flushdb()
    repo = copy_feature_repo(tmp_path, max_train_events=1500, max_holdout_events=300)
    artifacts = tmp_path / "artifact-store"
    settings = Settings(home=tmp_path / "var", feature_repo=repo, profile="production",
                        redis_url=PRODUCTION_REDIS_URL, postgres_url=postgres_url,
                        mlflow_artifacts_uri=artifacts.as_uri(), user_hash_secret="prod-secret")
    assert settings.tracking_uri == mlflow_url(postgres_url)
    spec = load_spec("next_app", repo)
    raw = generate_events(users=20, days=35, seed=5)
    build_champion(settings, spec, raw)  # ingest, features, apply, train, champion, materialize

    # Feast's registry and MLflow's are in PostgreSQL, nothing in SQLite files under the home
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(f"{POSTGRES}/{database}") as feast_db:
        views = feast_db.execute("SELECT feature_view_name FROM feature_views WHERE project_id = "
                                 "'next_app'").fetchall()
    assert {name for (name,) in views} >= {"user_profile_fv", "user_app_usage_fv"}
    with psycopg.connect(f"{POSTGRES}/{database}_mlflow") as mlflow_db:
        versions = mlflow_db.execute("SELECT version FROM model_versions WHERE name = %s",
                                     (spec.registered_model_name,)).fetchall()
    assert versions == [(1,)]
    assert not (settings.home / "mlflow.db").exists()
    assert not (settings.feast_dir / "registry.db").exists()
    assert feast_registry_url(postgres_url).startswith("postgresql+psycopg://")
    # the model's files went to the configured artifact location
    champion = lifecycle.Registry(settings.tracking_uri).alias_version(
        spec.registered_model_name, lifecycle.CHAMPION)
    assert champion == "1"
    assert any(artifacts.rglob("*.txt")) or any(artifacts.rglob("MLmodel"))

    serving = ServingSettings(**{**settings.model_dump(exclude={"redis_url"}),
                                 "redis_url": settings.redis_url, "registry_poll_seconds": 0,
                                 "log_json": False, "request_log_sample": 0.0})
    user = raw["user_id"].value_counts().index[0]
    at = raw["timestamp"].max().isoformat()
    with running(serving) as client:
        answer = client.post("/v1/predict", json={
            "user_id": user, "timestamp": at, "k": 4,
            "context": {"location": "home", "battery": 60, "charging": False, "network": "wifi",
                        "secs_since_prev_unlock": 300.0}})
        ready = client.get("/readyz").json()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_version"], body["fallback"], body["known_user"]) == ("1", None, True), body
    assert len(body["apps"]) == 4
    assert ready["status"] == "ready", ready


def test_bad_postgres_settings_say_which_and_why() -> None:
    with pytest.raises(ValueError, match="FEASTFLOW_POSTGRES_URL must start with postgresql://"):
        mlflow_url("mysql://db:3306/feastflow")
    with pytest.raises(ValueError, match="must name a database"):
        feast_registry_url("postgresql://127.0.0.1:5432/")
    assert mlflow_url("postgresql://u:p@db:5432/ff?sslmode=require") == (
        "postgresql+psycopg://u:p@db:5432/ff_mlflow?sslmode=require")
    closed = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match=f"PostgreSQL at 127.0.0.1:{closed}"):
        ensure_databases(f"postgresql://postgres@127.0.0.1:{closed}/feastflow")
