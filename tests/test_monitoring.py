"""The monitoring and retraining loop end to end, on a stable and on a drifted world.

Each world: a champion trained on 49 days of history; 9 live days arrive in batch; the last live
day is replayed through a real server (`feastflow serve`, Redis profile, every prediction
logged) and a real stream processor (`feastflow stream`); then `monitor` and `retrain` run.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import redis
from conftest import REDIS_TEST_URL, build_champion, copy_feature_repo
from mlflow import MlflowClient

from feastflow.settings import Settings
from feastflow.spec import ModelSpec, load_spec
from pipelines.demo import REPLAY_SERVER_ENV, running_processor, running_server
from pipelines.monitoring import MonitorResult, run_monitor
from pipelines.replay import ReplayStats, daily_job, replay_events
from pipelines.training import RetrainResult
from registry.lifecycle import Registry

pytestmark = pytest.mark.e2e

HISTORY_DAYS = 49  # 7 warm-up, 28 training, 14 holdout days: the champion's full split
LIVE_DAYS = 10  # the drift starts with them; the last one is replayed through the server
USERS = 100  # with fewer, a day's per-user inputs are a handful of users: their PSI is noise


def _registry(world: LoopWorld) -> Registry:
    """This world's registry (the fixtures' worlds each have their own)."""
    return Registry(world.settings.tracking_uri, world.settings.artifacts_uri)


@dataclass
class LoopWorld:
    """A world after serve -> replay -> features -> monitor -> retrain."""

    settings: Settings
    spec: ModelSpec
    live: pd.DataFrame  # raw events after the history
    replay_start: pd.Timestamp
    replayed: ReplayStats
    monitored: MonitorResult
    retrained: RetrainResult
    api_key: str


@contextlib.contextmanager
def _serving(settings: Settings, spec: ModelSpec, api_key: str) -> Iterator[str]:
    with running_server(settings, spec.name, extra_env={"FEASTFLOW_API_KEY": api_key,
                                                        **REPLAY_SERVER_ENV}) as url, \
            running_processor(settings, spec.name):
        yield url


def build_loop_world(root: Path, db: int, drift: bool, extra_days: int = 0) -> LoopWorld:
    """History, champion, live days in batch, the last live day replayed, monitor, retrain."""
    from feature_repo.next_app.world import Drift, generate_events
    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame
    from pipelines.training import retrain_use_case

    redis_url = REDIS_TEST_URL.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(redis_url).flushdb()
    repo = copy_feature_repo(root, max_train_events=3000, max_holdout_events=3000)
    settings = Settings(home=root / "var", feature_repo=repo, profile="redis",
                        redis_url=redis_url, user_hash_secret="loop-secret")
    spec = load_spec("next_app", repo)
    world = generate_events(USERS, HISTORY_DAYS + LIVE_DAYS + extra_days, seed=21,
                            drift=Drift(start_day=HISTORY_DAYS) if drift else None)
    live_start = world["timestamp"].min().floor("D") + pd.Timedelta(days=HISTORY_DAYS)
    replay_start = live_start + pd.Timedelta(days=LIVE_DAYS - 1)
    replay_end = replay_start + pd.Timedelta(days=1)
    build_champion(settings, spec, world[world["timestamp"] < live_start])
    live = world[world["timestamp"] >= live_start]
    ingest_frame(live[live["timestamp"] < replay_start], spec.event_log,
                 settings.events_dir(spec.name),
                 settings.user_hash_secret)
    daily_job(settings, spec, live_start)
    api_key = secrets.token_hex(8)
    day = live[(live["timestamp"] >= replay_start) & (live["timestamp"] < replay_end)]
    with _serving(settings, spec, api_key) as url:
        replayed = replay_events(url, api_key, settings, spec, day, predict_share=1.0, seed=1)
    compute_feature_tables(settings, spec)
    monitored = run_monitor(settings, spec, out_dir=root / "report", since=replay_start,
                            progress=lambda _: None)
    retrained = retrain_use_case(settings, spec, progress=lambda _: None)
    return LoopWorld(settings, spec, live, replay_start, replayed, monitored, retrained, api_key)


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> LoopWorld:
    """The generator's default drift from the first live day: a new app, later days, and
    habits that lean on the last apps used."""
    return build_loop_world(tmp_path_factory.mktemp("drifted"), db=11, drift=True)


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> LoopWorld:
    """A world without drift, one day longer (the deliberate-skew replay's)."""
    return build_loop_world(tmp_path_factory.mktemp("stable"), db=10, drift=False, extra_days=1)


def test_monitor_flags_the_drifted_inputs_and_not_the_stable_ones(drifted: LoopWorld,
                                                                  stable: LoopWorld) -> None:
    drifted_summary, stable_summary = drifted.monitored.summary, stable.monitored.summary
    alert_at = drifted_summary["thresholds"]["psi_alert"]
    assert stable_summary["drifted_features"] == []
    assert not [a for a in stable.monitored.alerts if a.startswith("feature drift")]
    flagged = drifted_summary["drifted_features"]
    assert flagged, drifted_summary["feature_drift"]
    assert any(a.startswith("feature drift") for a in drifted.monitored.alerts)
    for name in flagged:  # flagged by the drift, not by noise: twice what the stable world reads
        assert drifted_summary["feature_drift"][name] > alert_at
        assert drifted_summary["feature_drift"][name] > 2 * stable_summary["feature_drift"][name]
    assert "novaapp" in drifted_summary["data_quality"]["new_categories"].get("app", [])
    assert "novaapp" not in stable_summary["data_quality"]["new_categories"].get("app", [])


def test_the_files_of_the_report(drifted: LoopWorld) -> None:
    result = drifted.monitored
    html = result.report.read_text()
    assert html.count("data:image/png;base64,") >= 4  # drift, accuracy, volume, skew plots
    gauges = result.metrics_file.read_text()
    for name in result.summary["drifted_features"]:
        assert name in html
        assert f'feastflow_monitor_feature_psi{{feature="{name}",use_case="next_app"}}' in gauges
    assert "novaapp" in html
    assert f"feastflow_monitor_alerts{{use_case=\"next_app\"}} {len(result.alerts)}.0" in gauges
    assert result.summary_file.is_file()


def test_online_accuracy_counts_every_replayed_prediction(stable: LoopWorld) -> None:
    accuracy = stable.monitored.summary["online_accuracy"]
    champion = accuracy["champion"]
    # every replayed unlock was predicted, then happened: each answer has its next event
    assert champion["top1"]["n"] == stable.replayed.predictions
    assert 0.2 < champion["top1"]["rate"] < champion["top4"]["rate"] < 1.0
    assert champion["top4"]["low"] < champion["top4"]["rate"] < champion["top4"]["high"]


def test_skew_is_zero_on_a_clean_replay(drifted: LoopWorld, stable: LoopWorld) -> None:
    for world in (drifted, stable):
        skew = world.monitored.summary["skew"]
        assert skew["requests"] > 100
        assert skew["mismatch_rate"] == 0.0, skew["examples"]
        assert skew["same_candidates_share"] == 1.0
        assert not [a for a in world.monitored.alerts if "skew" in a]


def test_retrain_promotes_a_challenger_that_beats_the_champion_on_drift(drifted: LoopWorld
                                                                       ) -> None:
    from registry import lifecycle

    result = drifted.retrained
    assert result.decision.passed, result.decision.reasons
    assert result.challenger_metrics["top4"] > result.champion_metrics["top4"]
    registry, name = _registry(drifted), drifted.spec.registered_model_name
    assert registry.alias_version(name, lifecycle.CHAMPION) == result.trained.version
    # the decision and both models' metrics are recorded on both versions
    tags = registry.version_tags(name, result.trained.version)
    assert tags["lifecycle.last"].startswith("promoted: ")
    assert '"champion_metrics"' in tags["lifecycle.last"]
    old = registry.version_tags(name, result.champion_version)
    assert old["lifecycle.last"].startswith("replaced: ")
    # and rollback undoes it
    assert registry.rollback(name) == result.champion_version
    assert registry.alias_version(name, lifecycle.CHAMPION) == result.champion_version


def test_retrain_rejects_a_no_better_challenger_on_a_stable_period(stable: LoopWorld) -> None:
    from registry import lifecycle

    result = stable.retrained
    assert not result.decision.passed, result.decision.reasons
    registry, name = _registry(stable), stable.spec.registered_model_name
    assert registry.alias_version(name, lifecycle.CHAMPION) == result.champion_version
    tags = registry.version_tags(name, result.trained.version)
    assert tags["lifecycle.last"].startswith("rejected: ")


def test_skew_is_caught_when_a_feature_is_computed_differently_online(stable: LoopWorld) -> None:
    """The stream processor runs a copy of realtime.py whose 1-hour window is 2 hours."""
    settings, spec = stable.settings, stable.spec
    broken_repo = copy_feature_repo(settings.home.parent / "broken")
    module = broken_repo / "next_app" / "realtime.py"
    source = module.read_text()
    assert "3600 * SECOND" in source
    module.write_text(source.replace("3600 * SECOND", "7200 * SECOND"))
    broken = settings.model_copy(update={"feature_repo": broken_repo})
    since = stable.replay_start + pd.Timedelta(days=1)
    slice_ = stable.live[(stable.live["timestamp"] >= since)
                         & (stable.live["timestamp"] < since + pd.Timedelta(hours=10))]
    daily_job(settings, spec, stable.replay_start)  # midnight's batch job
    with running_server(settings, spec.name, extra_env={"FEASTFLOW_API_KEY": stable.api_key,
                                                        **REPLAY_SERVER_ENV}) as url, \
            running_processor(broken, spec.name):
        replay_events(url, stable.api_key, settings, spec, slice_, predict_share=1.0, seed=2)
    from pipelines.features import compute_feature_tables

    compute_feature_tables(settings, spec)
    result = run_monitor(settings, spec, out_dir=settings.home.parent / "broken-report",
                         since=since, progress=lambda _: None)
    per_feature = result.summary["skew"]["per_feature"]
    assert per_feature["unlocks_1h"] > 0.05
    wrong = {name for name, rate in per_feature.items() if rate > 0}
    assert wrong <= {"unlocks_1h", "distinct_apps_1h"}, per_feature
    assert any(a.startswith("training/serving skew") and "unlocks_1h" in a
               for a in result.alerts)


def test_the_report_is_logged_to_mlflow_beside_the_champions_runs(drifted: LoopWorld,
                                                                  tmp_path: Path) -> None:
    """A user of the MLflow UI finds the report in the model's experiment, on a run tagged with
    the version it judged, and the model version points back at that run."""
    from mlflow.artifacts import download_artifacts

    from pipelines.monitoring.report import LAST_MONITORING_RUN_TAG, MONITORED_VERSION_TAG

    result = drifted.monitored
    name = drifted.spec.registered_model_name
    assert result.mlflow_run_id is not None
    client = MlflowClient(tracking_uri=drifted.settings.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    version = result.summary["champion_version"]
    champion_run = client.get_run(client.get_model_version(name, version).run_id)
    assert run.info.experiment_id == champion_run.info.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == drifted.spec.name
    assert run.info.status == "FINISHED"
    assert run.data.tags[MONITORED_VERSION_TAG] == version
    assert run.data.metrics["alerts"] == len(result.alerts)
    logged = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"report.html", "summary.json", "metrics.prom"} <= logged
    folder = Path(download_artifacts(run_id=result.mlflow_run_id, dst_path=str(tmp_path),
                                     tracking_uri=drifted.settings.tracking_uri))
    assert (folder / "report.html").read_bytes() == result.report.read_bytes()
    assert (folder / "summary.json").read_bytes() == result.summary_file.read_bytes()
    tags = client.get_model_version(name, version).tags
    assert tags[LAST_MONITORING_RUN_TAG] == result.mlflow_run_id
