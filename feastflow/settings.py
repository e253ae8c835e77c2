"""The one settings object: environment variables (prefix FEASTFLOW_) override every default."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feastflow.postgres import feast_registry_url, mlflow_url
from feastflow.redis_config import RedisConfig, RedisType, parse_redis

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = PROJECT_ROOT / "feature_repo"
DEV_HASH_SECRET = "feastflow-dev-secret-change-me"
DEFAULT_USE_CASE = "next_app"  # the flagship: the CLI's and the server's default use case

log = logging.getLogger(__name__)


def default_home(project_root: Path = PROJECT_ROOT) -> Path:
    """Where state goes when FEASTFLOW_HOME is unset: a checkout's var/, else the user's data folder.

    An installed package's project root is site-packages, no place for state; a checkout is
    recognised by its pyproject.toml (an editable install runs from the checkout too).
    """
    if (project_root / "pyproject.toml").is_file():
        return project_root / "var"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "feastflow"


class Settings(BaseSettings):
    """Where data lives, which online store to use, and the secrets; defaults work on a laptop."""

    model_config = SettingsConfigDict(env_prefix="FEASTFLOW_", extra="ignore")

    env: Literal["development", "production"] = "development"
    home: Path = Field(default_factory=default_home, description="Root of all generated state.")
    profile: Literal["embedded", "redis", "production"] = "embedded"
    offline_engine: Literal["duckdb", "spark"] = Field(
        default="duckdb", description="what computes feature tables, training sets and "
        "materialization: DuckDB on this machine, or Spark (feature_store.spark.yaml)")
    spark_master: str | None = Field(default=None, description="overrides spark.master of "
                                     "feature_store.spark.yaml (local[2], spark://host:7077, yarn)")
    redis_url: str = Field(default="redis://localhost:6379/0", validation_alias="REDIS_URL")
    # The Redis online store beyond one server, in the terms of Feast's RedisOnlineStoreConfig
    # (see feastflow/redis_config.py); TLS and ACL credentials may also come in REDIS_URL.
    redis_type: RedisType = "redis"
    redis_sentinel_master: str = "mymaster"
    redis_ssl_ca_certs: Path | None = Field(default=None, description="CA bundle for rediss://")
    redis_ssl_certfile: Path | None = Field(default=None, description="client certificate")
    redis_ssl_keyfile: Path | None = Field(default=None, description="client certificate's key")
    user_hash_secret: str = DEV_HASH_SECRET
    feature_repo: Path = FEATURE_REPO
    use_case: str = Field(default=DEFAULT_USE_CASE, description="the use case of a CLI command "
                          "without -u, and of the server's routes that name none")
    data_dir: Path = Field(default=PROJECT_ROOT.parent / "shared" / "data",
                           description="public data sets the use cases' loaders read")
    mlflow_tracking_uri: str | None = None
    mlflow_artifacts_uri: str | None = Field(
        default=None, description="MLflow's artifact root (models, plots): a folder, s3://...; "
        "default $FEASTFLOW_HOME/mlartifacts")
    postgres_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/feastflow",
        description="production profile: Feast's registry in this database, MLflow's in "
        "<database>_mlflow (created if missing)")
    api_key: str | None = None

    # the event stream (POST /v1/events -> `feastflow stream`)
    stream_consumer: str = Field(default="processor-1", description="this processor's name")
    stream_dedupe_ttl_seconds: int = Field(
        default=3600, ge=1, description="an event id appended again within this is skipped")
    stream_claim_idle_ms: int = Field(
        default=60_000, ge=0, description="take over a dead processor's entries after this")
    stream_partitions: int = Field(
        default=1, ge=1, le=1024, description="Redis Streams a use case's events are spread over "
        "by hashed user, each read by one processor at a time (1: one stream, as before)")
    stream_lease_ms: int = Field(
        default=10_000, ge=300, description="a processor's hold on a partition; a dead "
        "processor's partitions go to the others after this")
    stream_batch_events: int = Field(default=2000, ge=1)
    stream_block_ms: int = Field(default=50, ge=1)
    stream_log_flush_seconds: float = Field(
        default=2.0, gt=0, description="append to the offline event log (and acknowledge) this often")

    @field_validator("home", "feature_repo", "data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _refuse_dev_secret_in_production(self) -> Settings:
        if self.user_hash_secret == DEV_HASH_SECRET:
            if self.env == "production":
                raise ValueError(
                    "FEASTFLOW_USER_HASH_SECRET is the development placeholder; "
                    "set a real secret before running with FEASTFLOW_ENV=production"
                )
            _warn_dev_secret_once()
        return self

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        env = {
            "FEASTFLOW_ENV": self.env,
            "FEASTFLOW_HOME": str(self.home),
            "FEASTFLOW_PROFILE": self.profile,
            "FEASTFLOW_OFFLINE_ENGINE": self.offline_engine,
            "REDIS_URL": self.redis_url,
            "FEASTFLOW_USER_HASH_SECRET": self.user_hash_secret,
            "FEASTFLOW_FEATURE_REPO": str(self.feature_repo),
            "FEASTFLOW_DATA_DIR": str(self.data_dir),
        }
        if self.mlflow_tracking_uri:
            env["FEASTFLOW_MLFLOW_TRACKING_URI"] = self.mlflow_tracking_uri
        if self.mlflow_artifacts_uri:
            env["FEASTFLOW_MLFLOW_ARTIFACTS_URI"] = self.mlflow_artifacts_uri
        env["FEASTFLOW_POSTGRES_URL"] = self.postgres_url
        env["FEASTFLOW_STREAM_PARTITIONS"] = str(self.stream_partitions)  # API and processors agree
        env["FEASTFLOW_REDIS_TYPE"] = self.redis_type
        env["FEASTFLOW_REDIS_SENTINEL_MASTER"] = self.redis_sentinel_master
        for name in ("redis_ssl_ca_certs", "redis_ssl_certfile", "redis_ssl_keyfile"):
            if getattr(self, name):
                env[f"FEASTFLOW_{name.upper()}"] = str(getattr(self, name))
        if self.api_key:
            env["FEASTFLOW_API_KEY"] = self.api_key
        if self.spark_master:
            env["FEASTFLOW_SPARK_MASTER"] = self.spark_master
        return env

    @property
    def online_redis(self) -> bool:
        """Whether the profile's online store is Redis (the redis and production profiles)."""
        return self.profile in ("redis", "production")

    def redis(self) -> RedisConfig:
        """The Redis online store's connection: REDIS_URL, its type and certificate files."""
        return parse_redis(self.redis_url, self.redis_type, self.redis_sentinel_master).with_files(
            self.redis_ssl_ca_certs, self.redis_ssl_certfile, self.redis_ssl_keyfile)

    def events_dir(self, use_case: str) -> Path:
        """A use case's raw event log: Parquet partitioned by date and hour."""
        return self.home / "events" / use_case

    def feature_tables_dir(self, use_case: str) -> Path:
        """A use case's batch feature tables, one Parquet file per table."""
        return self.features_dir / use_case

    @property
    def features_dir(self) -> Path:
        """Batch feature tables, one Parquet file per feature view."""
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and the embedded online store."""
        return self.home / "feast"

    def event_stream_key(self, use_case: str, partition: int = 0) -> str:
        """The Redis key of a use case's event stream (partition 0 keeps the unpartitioned name)."""
        base = f"feastflow:{use_case}:events"
        return f"{base}:p{partition}" if partition else base

    def served_dir(self, use_case: str) -> Path:
        """Sampled served features and predictions, Parquet by date/hour (the server writes it)."""
        return self.home / "served" / use_case

    def monitoring_dir(self, use_case: str) -> Path:
        """Monitoring reports: HTML, JSON summary and Prometheus gauges."""
        return self.home / "monitoring" / use_case

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking and registry URI: a SQLite file under home (PostgreSQL in the
        production profile) unless overridden."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if self.profile == "production":
            return mlflow_url(self.postgres_url)
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def feast_registry_path(self) -> str:
        """Feast's SQL registry: a SQLite file under home, PostgreSQL in the production profile."""
        if self.profile == "production":
            return feast_registry_url(self.postgres_url)
        return f"sqlite:///{self.feast_dir / 'registry.db'}"

    @property
    def artifacts_uri(self) -> str:
        """Where MLflow stores run artifacts (models, plots)."""
        return self.mlflow_artifacts_uri or (self.home / "mlartifacts").as_uri()

    @property
    def models_dir(self) -> Path:
        """Local copies of served models (last good model)."""
        return self.home / "models"


@lru_cache
def _warn_dev_secret_once() -> None:
    log.warning(
        "FEASTFLOW_USER_HASH_SECRET is not set: user ids are hashed with the public "
        "development secret. Set it before storing real users."
    )


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, built once per process."""
    return Settings()
