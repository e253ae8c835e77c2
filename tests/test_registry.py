"""Model lifecycle against a real MLflow tracking store and registry (SQLite file)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from feastflow.spec import GateSpec, lower_is_better
from registry import lifecycle

BASELINES = {"mru.top1": 0.30, "mru.top4": 0.55, "mfu.top1": 0.25, "mfu.top4": 0.60,
             "mfu_hour.top1": 0.33, "mfu_hour.top4": 0.66}


def metrics(top1: float, top4: float) -> dict[str, float]:
    return {"top1": top1, "top4": top4, **BASELINES}


def rules(max_top1_drop: float = 0.0, min_top4_gain: float = 0.0) -> GateSpec:
    return GateSpec(max_drop={"top1": max_top1_drop}, min_gain={"top4": min_top4_gain},
                    beat_baselines_on=["top1", "top4"])


def test_gate_needs_every_baseline_beaten_and_no_loss_against_champion() -> None:
    assert lifecycle.gate(metrics(0.40, 0.70), None, rules(), lower_is_better).passed
    lost_to_mfu_hour = lifecycle.gate(metrics(0.40, 0.65), None, rules(), lower_is_better)
    assert not lost_to_mfu_hour.passed
    assert any("mfu_hour" in r and "does not beat" in r for r in lost_to_mfu_hour.reasons)
    champion = metrics(0.40, 0.70)
    assert not lifecycle.gate(metrics(0.39, 0.72), champion, rules(), lower_is_better).passed
    assert lifecycle.gate(metrics(0.395, 0.72), champion, rules(0.01), lower_is_better).passed
    assert not lifecycle.gate(metrics(0.41, 0.70), champion, rules(0, 0.01), lower_is_better).passed


def test_once_there_is_a_champion_it_is_the_bar_not_the_baselines() -> None:
    weak_champion = metrics(0.30, 0.50)
    better_than_champion_not_mru = {**metrics(0.35, 0.54), "mru.top4": 0.56}
    decision = lifecycle.gate(better_than_champion_not_mru, weak_champion, rules(0, 0.02),
                              lower_is_better)
    assert decision.passed, decision.reasons
    assert not any("mru" in r for r in decision.reasons)
    assert not lifecycle.gate(better_than_champion_not_mru, None, rules(0, 0.02),
                              lower_is_better).passed


def test_the_gate_reads_each_metric_in_its_own_direction() -> None:
    # regression: MAE and RMSE are better when smaller; a "gain" of 5 s means 5 s less error
    gate = GateSpec(min_gain={"mae": 5.0}, max_drop={"rmse": 10.0}, beat_baselines_on=["mae"])
    first = {"mae": 200.0, "rmse": 400.0, "median.mae": 260.0, "linear.mae": 240.0}
    assert lifecycle.gate(first, None, gate, lower_is_better).passed
    worse_than_linear = {**first, "mae": 245.0}
    assert not lifecycle.gate(worse_than_linear, None, gate, lower_is_better).passed
    champion = {"mae": 210.0, "rmse": 395.0}
    assert lifecycle.gate({"mae": 204.0, "rmse": 404.0}, champion, gate, lower_is_better).passed
    assert not lifecycle.gate({"mae": 206.0, "rmse": 400.0}, champion, gate,
                              lower_is_better).passed  # gained only 4 s of MAE
    assert not lifecycle.gate({"mae": 190.0, "rmse": 406.0}, champion, gate,
                              lower_is_better).passed  # lost 11 s of RMSE
    # a classifier no better than its class prior never passes (AUC 0.5 ties the prior)
    auc = GateSpec(beat_baselines_on=["roc_auc"])
    assert not lifecycle.gate({"roc_auc": 0.5, "class_prior.roc_auc": 0.5}, None, auc,
                              lower_is_better).passed


def log_tiny_model(seed: int) -> str:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                        lgb.Dataset(x, label=(x[:, 0] > 0).astype(int)), num_boost_round=5)
    with mlflow.start_run() as run:
        info = mlflow.lightgbm.log_model(booster, name="model", pip_requirements=["lightgbm"])
    return info.model_uri, run.info.run_id


@pytest.fixture()
def tracking(tmp_path: Path) -> None:
    lifecycle.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), "t")


def test_register_promote_reject_and_roll_back(tracking: None) -> None:
    gate = rules()
    uri, run = log_tiny_model(1)
    v1 = lifecycle.register_challenger("m", uri, run, metrics(0.40, 0.70), {"lib.feast": "x"})
    assert lifecycle.alias_version("m", lifecycle.CHALLENGER) == v1.version == "1"
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) is None
    assert lifecycle.promote("m", gate, lower_is_better).passed
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "1"

    uri, run = log_tiny_model(2)
    lifecycle.register_challenger("m", uri, run, metrics(0.38, 0.75), {})
    decision = lifecycle.promote("m", gate, lower_is_better)
    assert not decision.passed
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "1"

    uri, run = log_tiny_model(3)
    lifecycle.register_challenger("m", uri, run, metrics(0.42, 0.72), {})
    assert lifecycle.promote("m", gate, lower_is_better).passed
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "3"
    assert lifecycle.rollback("m") == "1"
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "1"

    client = mlflow.MlflowClient()
    tags2 = client.get_model_version("m", "2").tags
    assert tags2["lifecycle.last"].startswith("rejected")
    tags3 = client.get_model_version("m", "3").tags
    assert tags3["lifecycle.last"].startswith("rolled_back")
    assert any(k.endswith(".promoted") for k in tags3)
    with pytest.raises(lifecycle.RegistryError, match="replaced no earlier champion"):
        lifecycle.rollback("m")


def test_load_by_alias_returns_a_native_booster(tracking: None) -> None:
    uri, run = log_tiny_model(4)
    lifecycle.register_challenger("m2", uri, run, metrics(0.4, 0.7), {})
    loaded = lifecycle.load_by_alias("m2", lifecycle.CHALLENGER)
    assert isinstance(loaded.booster, lgb.Booster) and loaded.version == "1"
    with pytest.raises(lifecycle.RegistryError, match="train and promote first"):
        lifecycle.load_by_alias("m2", lifecycle.CHAMPION)
