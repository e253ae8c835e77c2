"""The registry as the server meets it: `feastflow serve` in a child process over a real socket,
a real MLflow (SQLite file, or a real `mlflow server` over HTTP), real Redis.

A child process, not a thread: LightGBM aborts the whole process on some truncated model files.
Each test serves its own copy of the served world's home (the server writes its last good model
copy there, and these tests damage it).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lightgbm as lgb
import mlflow
import pandas as pd
import pytest
from conftest import ServedWorld
from mlflow.types.schema import DataType

from feastflow.ranking import model_matrix
from feastflow.settings import Settings
from pipelines.demo import free_port, stop_process
from registry.lifecycle import CHAMPION, SHA256_TAG, Registry, file_sha256

pytestmark = pytest.mark.redis

KEY = "registry-key"



def wait_for(check: Any, what: str, proc: subprocess.Popen[bytes] | None = None,
             timeout_s: float = 180.0) -> Any:
    """Poll `check()` until it returns something truthy (generous deadline: a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with code {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
            if found := check():
                return found
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


@contextlib.contextmanager
def serve_child(settings: Settings, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`feastflow serve` in a child process; yield its URL once /healthz answers."""
    port = free_port()
    child_env = {**os.environ, **settings.as_env(), "FEASTFLOW_REGISTRY_POLL_SECONDS": "0",
                 "FEASTFLOW_API_KEY": KEY, "FEASTFLOW_LOG_JSON": "false",
                 "FEASTFLOW_USE_CASES": "next_app", **env}
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port",
                                 str(port), "--use-case", "next_app"], env=child_env,
                                stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=2).status_code == 200,
                 f"the server (log {log})", proc)
        yield url, proc
    finally:
        stop_process(proc, 20)


def home_copy(world: ServedWorld, root: Path) -> Settings:
    """The served world with its own copy of the home (same Redis, same feature repo)."""
    shutil.copytree(world.settings.home, root / "var", ignore=shutil.ignore_patterns("served"))
    return world.settings.model_copy(update={"home": root / "var"})


def predict_body(world: ServedWorld) -> dict[str, Any]:
    return {"user_id": world.users(1)[0], "timestamp": world.at.isoformat(), "k": 4,
            "context": {"location": "home", "battery": 55, "charging": False, "network": "wifi",
                        "secs_since_prev_unlock": 120.0}}


def last_good_copy(settings: Settings, world: ServedWorld) -> Path:
    return settings.models_dir / world.spec.registered_model_name / "champion"


# --- item 4: a truncated model file is refused, never handed to LightGBM ----------------------


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_last_good_copy_is_refused_when_the_registry_is_down(
        served_world: ServedWorld, tmp_path: Path, damage: str) -> None:
    settings = home_copy(served_world, tmp_path)
    log = tmp_path / "server.log"
    with serve_child(settings, log) as (url, proc):  # the registry is up: a last good copy is saved
        version = wait_for(lambda: httpx.get(f"{url}/healthz").json()["model_version"],
                           "a champion", proc)
    model_file = last_good_copy(settings, served_world) / "model.lgb"
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")

    down = {"FEASTFLOW_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    with serve_child(settings, log, **down) as (url, proc):
        ready = httpx.get(f"{url}/readyz", timeout=30)
        answer = httpx.post(f"{url}/v1/predict", json=predict_body(served_world), timeout=30)
        assert proc.poll() is None  # LightGBM never saw the file (it aborted: exit 134 / 3)
    assert ready.status_code == 503 and "champion" not in ready.json()["models"]
    assert "model_checksum_mismatch" in ready.json()["reasons"]
    assert answer.status_code == 200 and answer.json()["fallback"] is not None
    assert f"last good champion v{version}" in log.read_text()  # the details go to the log


def test_a_hot_reload_refuses_a_truncated_version_and_keeps_serving(
        served_world: ServedWorld, tmp_path: Path) -> None:
    settings = home_copy(served_world, tmp_path)
    registry = Registry(settings.tracking_uri)
    name = served_world.spec.registered_model_name
    champion = registry.alias_version(name, CHAMPION)
    assert champion is not None
    # A new version registered (checksum recorded) from its own copy of the champion's files,
    # then damaged in the artifact store.
    mv = registry.client.get_model_version(name, champion)
    source = registry.download_version(name, champion, tmp_path / "stored-model")
    bad = registry.register_challenger(name, source.as_uri(), mv.run_id, {}, {})
    assert registry.version_tags(name, bad.version)[SHA256_TAG] == file_sha256(
        source / "model.lgb")
    (source / "model.lgb").write_bytes((source / "model.lgb").read_bytes()[:4000])
    registry.client.delete_registered_model_alias(name, "challenger")

    with serve_child(settings, tmp_path / "server.log") as (url, proc):
        wait_for(lambda: httpx.get(f"{url}/healthz").json()["model_version"] == champion,
                 "the champion", proc)
        registry.set_alias(name, CHAMPION, bad.version)
        reload = httpx.post(f"{url}/admin/reload", headers={"x-api-key": KEY}, timeout=120)
        ready = httpx.get(f"{url}/readyz", timeout=30).json()
        answer = httpx.post(f"{url}/v1/predict", json=predict_body(served_world), timeout=30)
        assert proc.poll() is None
    assert reload.status_code == 200 and reload.json()["swapped"] == []
    assert ready["status"] == "degraded" and ready["models"]["champion"] == champion
    assert "model_checksum_mismatch" in ready["reasons"]
    assert answer.status_code == 200 and answer.json()["model_version"] == champion
    assert answer.json()["fallback"] is None


# --- item 5: a registry over HTTP -------------------------------------------------------------


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a free port, SQLite backend and artifacts in tmp."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "server-artifacts")],
            stdout=out, stderr=out, env={k: v for k, v in os.environ.items()
                                         if not k.startswith("MLFLOW_")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200,
                 f"mlflow server (log {log})", proc)
        yield url
    finally:
        stop_process(proc, 20)


def test_the_server_loads_its_champion_from_an_mlflow_server_over_http(
        served_world: ServedWorld, mlflow_server: str, tmp_path: Path) -> None:
    importlib.import_module("serving.app")  # its MLflow HTTP defaults, as the server sets them

    name = served_world.spec.registered_model_name
    booster = Registry(served_world.settings.tracking_uri).load_by_alias(name).booster
    remote = Registry(mlflow_server, create=True)
    with remote.run(served_world.spec.name, "over-http") as run:
        info = mlflow.lightgbm.log_model(booster, name="model", pip_requirements=["lightgbm"])
    version = remote.register_challenger(name, info.model_uri, run.info.run_id, {}, {}).version
    remote.set_alias(name, CHAMPION, version)

    settings = home_copy(served_world, tmp_path)
    shutil.rmtree(settings.models_dir, ignore_errors=True)  # nothing to fall back on
    with serve_child(settings, tmp_path / "server.log",
                 FEASTFLOW_MLFLOW_TRACKING_URI=mlflow_server) as (url, proc):
        served = wait_for(lambda: httpx.get(f"{url}/healthz").json()["model_version"],
                          "the champion over HTTP", proc, timeout_s=90)
        ready = httpx.get(f"{url}/readyz", timeout=30).json()
        reload = httpx.post(f"{url}/admin/reload", headers={"x-api-key": KEY}, timeout=60).json()
    assert served == version
    assert not any("registry" in reason for reason in ready["reasons"]), ready
    assert reload["registry_error"] is None
    meta = json.loads((last_good_copy(settings, served_world) / "meta.json").read_text())
    assert meta["run_id"] == run.info.run_id  # this model came from the HTTP registry


# --- item 20: signature and dataset lineage in MLflow -----------------------------------------


def test_a_trained_model_has_a_usable_signature_and_its_datasets(
        served_world: ServedWorld, tmp_path: Path) -> None:
    from mlflow.models import Model

    settings, spec = served_world.settings, served_world.spec
    registry = Registry(settings.tracking_uri)
    name = spec.registered_model_name
    version = registry.alias_version(name, CHAMPION)
    assert version is not None
    mv = registry.client.get_model_version(name, version)
    folder = registry.download_version(name, version, tmp_path / "model")
    signature = Model.load(folder).signature
    assert signature is not None
    booster = lgb.Booster(model_file=str(folder / "model.lgb"))
    assert signature.inputs.input_names() == booster.feature_name()
    assert signature.inputs.input_dict()["location"].type == DataType.string
    # pyfunc inference with the categorical column as a client sends it (strings, from JSON)
    example = Model.load(folder).load_input_example(str(folder))
    assert isinstance(example, pd.DataFrame) and example["location"].map(type).eq(str).any()
    scores = mlflow.pyfunc.load_model(str(folder)).predict(example)
    expected = booster.predict(model_matrix(example, booster.feature_name(),
                                            spec.model.categorical))
    assert list(scores) == pytest.approx(list(expected))

    inputs = registry.client.get_run(mv.run_id).inputs.dataset_inputs
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                for i in inputs}
    assert set(contexts) == {"training", "evaluation"}
    fingerprint = registry.version_tags(name, version)["data_fingerprint"]
    assert all(d.digest == fingerprint for d in contexts.values())
    assert "events" in json.loads(contexts["training"].source)["uri"]


def test_training_logs_no_warning(served_world: ServedWorld, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.training import train_use_case

    settings = home_copy(served_world, tmp_path)
    (settings.home / "mlflow.db").unlink()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        train_use_case(settings, served_world.spec, progress=lambda _: None)
    # (SQLAlchemy's deprecation warnings through MLflow are item 23's, not the model's)
    ours = [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)
            and ("mlflow" in w.filename or "mlflow" in str(w.message).lower())]
    assert ours == [], "\n".join(ours)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("mlflow")] == []


# --- item 6: a tracking URI naming a SQLite file that does not exist ---------------------------


def test_a_missing_sqlite_registry_is_refused_at_start_not_created(tmp_path: Path) -> None:
    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from pipelines.cli import app
    from registry.lifecycle import RegistryMissing
    from serving.app import create_app
    from serving.settings import ServingSettings

    missing = tmp_path / "typo" / "mlflow.db"
    env = {"FEASTFLOW_MLFLOW_TRACKING_URI": f"sqlite:///{missing}"}
    home = ["--home", str(tmp_path / "home")]
    for command in (["promote"], ["rollback"], ["evaluate"], ["serve", "--port", "1"]):
        result = CliRunner().invoke(app, [*home, *command], env=env)
        assert result.exit_code == 2, (command, result.output)
        assert str(missing) in " ".join(result.output.split()), result.output
    settings = ServingSettings(home=tmp_path / "home", mlflow_tracking_uri=f"sqlite:///{missing}",
                               registry_poll_seconds=0, log_json=False)
    with pytest.raises(RegistryMissing, match=str(missing)), TestClient(create_app(settings)):
        pass
    assert not missing.exists() and not missing.parent.exists()
