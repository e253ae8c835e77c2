"""The monitoring report where a user of the MLflow UI looks for it, and its template shipped
with the package (real MLflow on a SQLite file; a real setuptools build)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec, load_spec
from pipelines.monitoring.report import (
    LAST_MONITORING_RUN_TAG,
    MONITORED_VERSION_TAG,
    TEMPLATE,
    log_to_mlflow,
    report_template,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def spec() -> ModelSpec:
    """The flagship's spec (only its names are used)."""
    return load_spec("next_app", FEATURE_REPO)


def _champion(settings: Settings, spec: ModelSpec) -> tuple[str, str]:
    """A training run in the use case's experiment and a registered version of it."""
    from registry import lifecycle

    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri, create=True)
    experiment_id = registry.experiment_id(spec.name)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.create_run(experiment_id, run_name="training")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(spec.registered_model_name)
    version = client.create_model_version(spec.registered_model_name,
                                          f"{run.info.artifact_uri}/model", run.info.run_id)
    return run.info.run_id, str(version.version)


def _report_files(folder: Path) -> list[Path]:
    folder.mkdir()
    (folder / "report.html").write_text("<html>the report</html>")
    (folder / "summary.json").write_text(json.dumps({"alerts": ["a"]}))
    (folder / "metrics.prom").write_text("feastflow_monitor_alerts 1.0\n")
    return sorted(folder.iterdir())


def _summary(version: str) -> dict:
    return {
        "window": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-02T00:00:00+00:00"},
        "champion_version": version, "served_requests": 120, "alerts": ["feature drift: x"],
        "drifted_features": ["x"], "prediction_drift": None,
        "skew": {"requests": 0, "mismatch_rate": float("nan")},
        "data_quality": {"volume_ratio": 1.1},
        "online_accuracy": {"champion": {"top1": {"rate": 0.3}, "top4": {"rate": 0.6}},
                            "champion (shadow)": {"top1": {"rate": float("nan")}}},
    }


def test_the_report_is_logged_in_the_champions_experiment_tagged_with_its_version(
        tmp_path: Path, spec: ModelSpec) -> None:
    settings = Settings(home=tmp_path / "home")
    run_id, version = _champion(settings, spec)
    files = _report_files(tmp_path / "report")

    logged = log_to_mlflow(settings.tracking_uri, spec, version, run_id, _summary(version), files)

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    run = client.get_run(logged)
    assert run.info.experiment_id == client.get_run(run_id).info.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == spec.name
    assert run.info.status == "FINISHED"
    assert run.data.tags[MONITORED_VERSION_TAG] == version
    assert run.data.tags["feastflow.registered_model"] == spec.registered_model_name
    # the headline numbers, finite ones only (no skew measured, no prediction drift)
    assert run.data.metrics == {"alerts": 1.0, "drifted_features": 1.0, "event_volume_ratio": 1.1,
                                "served_requests": 120.0, "online_top1.champion": 0.3,
                                "online_top4.champion": 0.6}
    assert {a.path for a in client.list_artifacts(logged)} == {f.name for f in files}
    folder = Path(download_artifacts(run_id=logged, dst_path=str(tmp_path / "down"),
                                     tracking_uri=settings.tracking_uri))
    for file in files:
        assert (folder / file.name).read_bytes() == file.read_bytes()
    tags = client.get_model_version(spec.registered_model_name, version).tags
    assert tags[LAST_MONITORING_RUN_TAG] == logged


def test_a_run_that_cannot_be_logged_is_marked_failed(tmp_path: Path, spec: ModelSpec) -> None:
    """No half-logged run left RUNNING: a missing file fails the run and raises."""
    settings = Settings(home=tmp_path / "home")
    run_id, version = _champion(settings, spec)
    files = [*_report_files(tmp_path / "report"), tmp_path / "report" / "gone.html"]
    with pytest.raises(Exception, match=r"gone\.html"):
        log_to_mlflow(settings.tracking_uri, spec, version, run_id, _summary(version), files)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment_id], "tags.`feastflow.monitoring` = 'true'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_template_ships_with_a_non_editable_build(tmp_path: Path) -> None:
    """setuptools' build (what a wheel holds) carries the report's template as package data."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "pipelines", source / "pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q",
                    "build_py", "--build-lib", str(tmp_path / "build")],
                   cwd=source, check=True, capture_output=True)
    built = tmp_path / "build" / "pipelines" / "monitoring" / TEMPLATE
    assert built.read_text(encoding="utf-8") == report_template()
