"""Settings and the Feast store configuration built from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from feastflow.settings import FEATURE_REPO, PROJECT_ROOT, Settings
from feastflow.store import redis_connection_string, repo_config


def test_production_refuses_the_development_secret() -> None:
    with pytest.raises(ValueError, match="FEASTFLOW_USER_HASH_SECRET"):
        Settings(env="production")
    assert Settings(env="production", user_hash_secret="s3cret").env == "production"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6379/0", "localhost:6379,db=0"),
        ("redis://:pw@cache:6380/3", "cache:6380,db=3,password=pw"),
        ("rediss://cache", "cache:6379,db=0,ssl=true"),
    ],
)
def test_redis_url_becomes_feast_connection_string(url: str, expected: str) -> None:
    assert redis_connection_string(url) == expected


def test_redis_url_must_be_redis() -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        redis_connection_string("http://localhost:6379")


def _as_feast_reads(path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A feature_store.yaml as Feast's CLI reads it (${VAR} expanded) with FEASTFLOW_HOME=home."""
    monkeypatch.setenv("FEASTFLOW_HOME", str(home))
    return yaml.safe_load(os.path.expandvars(path.read_text()))


def test_yaml_paths_follow_feastflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `feast` run in feature_repo/ and feastflow must use the same files, whatever the home.
    settings = Settings(home=tmp_path)
    for name in ("feature_store.yaml", "feature_store.redis.yaml"):
        raw = _as_feast_reads(FEATURE_REPO / name, settings.home, monkeypatch)
        assert raw["registry"]["path"] == f"sqlite:///{settings.feast_dir / 'registry.db'}"
    raw = _as_feast_reads(FEATURE_REPO / "feature_store.yaml", settings.home, monkeypatch)
    assert raw["online_store"]["path"] == str(settings.feast_dir / "online.db")


def test_repo_config_follows_home_and_profile(tmp_path: Path) -> None:
    embedded = repo_config(Settings(home=tmp_path), "next_app")
    assert embedded.project == "next_app"  # each use case is its own Feast project
    assert embedded.online_store.path == str(tmp_path / "feast" / "online.db")
    redis = repo_config(Settings(home=tmp_path, profile="redis",
                                 redis_url="redis://example:7000/2"), "taxi_eta")
    assert redis.online_store.connection_string == "example:7000,db=2"
    assert str(tmp_path / "feast" / "registry.db") in redis.registry.path


def test_each_use_case_folder_gives_feast_cli_its_own_project_on_the_same_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from feastflow.spec import use_cases

    settings = Settings(home=tmp_path)
    template = yaml.safe_load((FEATURE_REPO / "feature_store.yaml").read_text())
    for name in use_cases(FEATURE_REPO):
        own = _as_feast_reads(FEATURE_REPO / name / "feature_store.yaml", tmp_path, monkeypatch)
        config = repo_config(settings, name)
        assert own["project"] == name == config.project
        assert own["registry"]["path"] == config.registry.path
        assert own["online_store"]["path"] == config.online_store.path
        for key in ("provider", "offline_store", "entity_key_serialization_version", "auth"):
            assert own[key] == template[key], (name, key)


def test_the_checkout_keeps_its_var_folder_as_the_default_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEASTFLOW_HOME", raising=False)
    assert Settings().home == PROJECT_ROOT / "var"


def test_an_installed_package_keeps_its_state_out_of_site_packages(tmp_path: Path) -> None:
    # The package laid out as a non-editable install lays it: no pyproject.toml beside it.
    site = tmp_path / "site-packages"
    shutil.copytree(PROJECT_ROOT / "feastflow", site / "feastflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEASTFLOW_")}
    env.update(PYTHONPATH=str(site), XDG_DATA_HOME=str(tmp_path / "data"))
    code = "import feastflow.settings as s; print(s.__file__); print(s.Settings().home)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    module, home = done.stdout.split()
    assert Path(module).is_relative_to(site)  # the copy was imported, not the checkout
    assert Path(home) == tmp_path / "data" / "feastflow"
