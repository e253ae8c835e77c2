"""Open a use case's Feast feature store for a profile, with paths and Redis from Settings.

Each use case is its own Feast project (named after its folder), in one registry: its entities,
views and online rows never meet another use case's, and `apply` parses only its folder.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml
from feast import FeatureStore, FileSource
from feast.data_source import DataSource
from feast.repo_config import RepoConfig

from feastflow.redis_config import parse_redis
from feastflow.settings import Settings

PROFILE_YAML = {"embedded": "feature_store.yaml", "redis": "feature_store.redis.yaml",
                "production": "feature_store.production.yaml"}
SPARK_YAML = "feature_store.spark.yaml"  # merged over the profile's when offline_engine is spark


def feature_table_source(definitions_file: str, table: str) -> DataSource:
    """The Feast source of a use case's batch feature table, called from its definitions.py as
    `feature_table_source(__file__, "<table>")`: `<table>.parquet` where `compute_feature_tables`
    writes it, $FEASTFLOW_HOME/features/<use case folder>/, the home defaulting to the `var/`
    beside the feature repo that holds the folder (Feast's own CLI run in a copy of the repo
    finds the copy's state).

    An absolute path: Feast's DuckDB store reads FileSource paths relative to the working
    directory, not to the repo. Read from the environment, not Settings: Feast imports the
    definitions that call this, and that import must not validate secrets.

    With FEASTFLOW_OFFLINE_ENGINE=spark the same file is a SparkSource: Feast's Spark offline
    store and compute engine read only their own source type.
    """
    folder = Path(definitions_file).resolve().parent
    home = Path(os.environ.get("FEASTFLOW_HOME") or folder.parents[1] / "var")
    path = str(home.expanduser().resolve() / "features" / folder.name / f"{table}.parquet")
    if os.environ.get("FEASTFLOW_OFFLINE_ENGINE") == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=f"{table}_source", path=path, file_format="parquet",
                           timestamp_field="event_timestamp",
                           created_timestamp_column="created_timestamp")
    return FileSource(name=f"{table}_source", path=path, timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp")


def redis_connection_string(redis_url: str) -> str:
    """Feast's `host:port,db=N[,username=...,password=...,ssl=true,...]` for a REDIS_URL."""
    return parse_redis(redis_url).feast_connection_string()


def repo_config(settings: Settings, use_case: str) -> RepoConfig:
    """The profile's feature_store.yaml with the use case as project, and registry, online store
    and Redis from settings."""
    yaml_path = settings.feature_repo / PROFILE_YAML[settings.profile]
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))
    feast_dir = settings.feast_dir
    feast_dir.mkdir(parents=True, exist_ok=True)
    raw["project"] = use_case
    raw["registry"]["path"] = settings.feast_registry_path
    if settings.online_redis:
        redis = settings.redis()
        raw["online_store"]["connection_string"] = redis.feast_connection_string()
        raw["online_store"]["redis_type"] = redis.redis_type
        raw["online_store"]["sentinel_master"] = redis.sentinel_master
    else:
        raw["online_store"]["path"] = str(feast_dir / "online.db")
    if isinstance(raw.get("batch_engine"), dict) and "state_dir" in raw["batch_engine"]:
        raw["batch_engine"]["state_dir"] = str(feast_dir / "materialized")
    if settings.offline_engine == "spark":
        raw.update(spark_overlay(settings))
    return RepoConfig(repo_path=settings.feature_repo, **raw)


def spark_overlay(settings: Settings) -> dict[str, dict]:
    """The Spark offline store and compute engine sections of feature_store.spark.yaml, with
    spark.master from settings when set, and Python workers on this interpreter unless the file
    names one (Feast's materialization and the feature SQL's functions run Python on executors)."""
    raw = yaml.safe_load((settings.feature_repo / SPARK_YAML).read_text())
    for section in ("offline_store", "batch_engine"):
        conf = {"spark.pyspark.python": sys.executable, **(raw[section].get("spark_conf") or {})}
        if settings.spark_master:
            conf["spark.master"] = settings.spark_master
        raw[section] = {**raw[section], "spark_conf": {k: str(v) for k, v in conf.items()}}
    # PySpark starts local Python workers with $PYSPARK_PYTHON, not the conf: set it before
    # whichever of feastflow or Feast starts the session.
    os.environ.setdefault("PYSPARK_PYTHON", raw["offline_store"]["spark_conf"]["spark.pyspark.python"])
    return {"offline_store": raw["offline_store"], "batch_engine": raw["batch_engine"]}


@contextlib.contextmanager
def _feast_environment(settings: Settings) -> Iterator[None]:
    # Definitions read FEASTFLOW_HOME at import to place their tables; Feast imports repo
    # modules relative to the working directory, and rehydrates on-demand UDFs from source.
    old_cwd, old_home = os.getcwd(), os.environ.get("FEASTFLOW_HOME")
    old_engine = os.environ.get("FEASTFLOW_OFFLINE_ENGINE")
    os.environ["FEASTFLOW_HOME"] = str(settings.home)
    os.environ["FEASTFLOW_OFFLINE_ENGINE"] = settings.offline_engine
    os.chdir(settings.feature_repo)
    sys.path.insert(0, str(settings.feature_repo))
    try:
        yield
    finally:
        sys.path.remove(str(settings.feature_repo))
        os.chdir(old_cwd)
        for name, old in (("FEASTFLOW_HOME", old_home), ("FEASTFLOW_OFFLINE_ENGINE", old_engine)):
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def open_store(settings: Settings, use_case: str) -> FeatureStore:
    """The use case's FeatureStore for the settings' profile (no repo import: registry only)."""
    return FeatureStore(repo_path=str(settings.feature_repo / use_case),
                        config=repo_config(settings, use_case))


def apply_repo(settings: Settings, use_case: str) -> None:
    """What `feast apply` does, for one use case: parse its folder, apply it as its project
    (objects of the project no longer defined are deleted; other projects are not touched)."""
    from feast.project import Project
    from feast.repo_operations import apply_total_with_repo_instance, parse_repo

    config = repo_config(settings, use_case)
    folder = settings.feature_repo / use_case
    if not folder.is_dir():
        raise FileNotFoundError(f"no use case folder {folder}")
    with _feast_environment(settings):
        _forget_repo_modules(folder)
        repo = parse_repo(folder)
        if not repo.projects:
            repo.projects.append(Project(name=use_case, description=""))
        store = FeatureStore(repo_path=str(folder), config=config)
        with contextlib.redirect_stdout(sys.stderr):  # Feast prints its diff: keep stdout clean
            apply_total_with_repo_instance(store, use_case, store.registry, repo,
                                           skip_source_validation=False)


def _forget_repo_modules(folder: Path) -> None:
    # A second apply in one process (tests) must re-import definitions with the current home.
    package = folder.name
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
