"""Model lifecycle against a real MLflow tracking store and registry (SQLite file)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from feastflow.spec import GateSpec
from registry import lifecycle

BASELINES = {"mru_top1": 0.30, "mru_top4": 0.55, "mfu_top1": 0.25, "mfu_top4": 0.60,
             "mfu_hour_top1": 0.33, "mfu_hour_top4": 0.66}


def metrics(top1: float, top4: float) -> dict[str, float]:
    return {"top1": top1, "top4": top4, **BASELINES}


def test_gate_needs_every_baseline_beaten_and_no_loss_against_champion() -> None:
    assert lifecycle.gate(metrics(0.40, 0.70), None, 0, 0, True).passed
    lost_to_mfu_hour = lifecycle.gate(metrics(0.40, 0.65), None, 0, 0, True)
    assert not lost_to_mfu_hour.passed
    assert any("mfu_hour" in r and "<=" in r for r in lost_to_mfu_hour.reasons)
    champion = metrics(0.40, 0.70)
    assert not lifecycle.gate(metrics(0.39, 0.72), champion, 0, 0, True).passed
    assert lifecycle.gate(metrics(0.395, 0.72), champion, 0.01, 0, True).passed
    assert not lifecycle.gate(metrics(0.41, 0.70), champion, 0, 0.01, True).passed


def test_once_there_is_a_champion_it_is_the_bar_not_the_baselines() -> None:
    weak_champion = metrics(0.30, 0.50)
    better_than_champion_not_mru = {**metrics(0.35, 0.54), "mru_top4": 0.56}
    decision = lifecycle.gate(better_than_champion_not_mru, weak_champion, 0, 0.02, True)
    assert decision.passed, decision.reasons
    assert not any("mru" in r for r in decision.reasons)
    assert not lifecycle.gate(better_than_champion_not_mru, None, 0, 0.02, True).passed


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
    gate = GateSpec()
    uri, run = log_tiny_model(1)
    v1 = lifecycle.register_challenger("m", uri, run, metrics(0.40, 0.70), {"lib.feast": "x"})
    assert lifecycle.alias_version("m", lifecycle.CHALLENGER) == v1.version == "1"
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) is None
    assert lifecycle.promote("m", gate).passed
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "1"

    uri, run = log_tiny_model(2)
    lifecycle.register_challenger("m", uri, run, metrics(0.38, 0.75), {})
    decision = lifecycle.promote("m", gate)
    assert not decision.passed
    assert lifecycle.alias_version("m", lifecycle.CHAMPION) == "1"

    uri, run = log_tiny_model(3)
    lifecycle.register_challenger("m", uri, run, metrics(0.42, 0.72), {})
    assert lifecycle.promote("m", gate).passed
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
