"""Open the Feast feature store of a profile, with paths and Redis taken from Settings."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from feastflow.settings import Settings

PROFILE_YAML = {"embedded": "feature_store.yaml", "redis": "feature_store.redis.yaml"}


def redis_connection_string(redis_url: str) -> str:
    """Turn redis://[:password@]host:port/db into Feast's `host:port,db=N[,password=...]`."""
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"REDIS_URL must start with redis:// or rediss://, got {redis_url!r}")
    parts = [f"{url.hostname or 'localhost'}:{url.port or 6379}"]
    db = (url.path or "/0").lstrip("/") or "0"
    parts.append(f"db={db}")
    if url.password:
        parts.append(f"password={url.password}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def repo_config(settings: Settings) -> RepoConfig:
    """The profile's feature_store.yaml with registry, online store and Redis from settings."""
    yaml_path = settings.feature_repo / PROFILE_YAML[settings.profile]
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))
    feast_dir = settings.feast_dir
    feast_dir.mkdir(parents=True, exist_ok=True)
    raw["registry"]["path"] = f"sqlite:///{feast_dir / 'registry.db'}"
    if settings.profile == "redis":
        raw["online_store"]["connection_string"] = redis_connection_string(settings.redis_url)
    else:
        raw["online_store"]["path"] = str(feast_dir / "online.db")
    return RepoConfig(repo_path=settings.feature_repo, **raw)


@contextlib.contextmanager
def _feast_environment(settings: Settings) -> Iterator[None]:
    # Definitions read FEASTFLOW_HOME at import to place their tables; Feast imports repo
    # modules relative to the working directory, and rehydrates on-demand UDFs from source.
    old_cwd, old_home = os.getcwd(), os.environ.get("FEASTFLOW_HOME")
    os.environ["FEASTFLOW_HOME"] = str(settings.home)
    os.chdir(settings.feature_repo)
    sys.path.insert(0, str(settings.feature_repo))
    try:
        yield
    finally:
        sys.path.remove(str(settings.feature_repo))
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("FEASTFLOW_HOME", None)
        else:
            os.environ["FEASTFLOW_HOME"] = old_home


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for the settings' profile (no repo import: reads the registry only)."""
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings))


def apply_repo(settings: Settings) -> None:
    """Exactly what `feast apply` does, for the settings' profile and home."""
    from feast.repo_operations import apply_total

    config = repo_config(settings)
    with _feast_environment(settings):
        _forget_repo_modules(settings.feature_repo)
        apply_total(config, Path(settings.feature_repo), skip_source_validation=False)


def _forget_repo_modules(feature_repo: Path) -> None:
    # A second apply in one process (tests) must re-import definitions with the current home.
    for sub in (p.name for p in feature_repo.iterdir() if p.is_dir()):
        for name in [m for m in sys.modules if m == sub or m.startswith(sub + ".")]:
            del sys.modules[name]
