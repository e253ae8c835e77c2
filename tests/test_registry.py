"""Model lifecycle against a real MLflow tracking store and registry (SQLite file)."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import mlflow
import numpy as np
import pytest

from feastflow.spec import GateSpec, lower_is_better
from registry import lifecycle
from registry.memory import InMemoryRegistry

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


def tiny_booster(seed: int) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    return lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                     lgb.Dataset(x, label=(x[:, 0] > 0).astype(int)), num_boost_round=5)


@pytest.fixture()
def registry(tmp_path: Path) -> lifecycle.Registry:
    return lifecycle.Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(),
                              create=True)


def register_tiny(registry: lifecycle.Lifecycle, name: str, seed: int,
                  scores: dict[str, float]) -> lifecycle.RegisteredVersion:
    """Log a tiny model and register it as challenger, in MLflow or in memory."""
    if isinstance(registry, InMemoryRegistry):
        return registry.register(name, tiny_booster(seed), metrics=scores)
    assert isinstance(registry, lifecycle.Registry)
    with registry.run("t", f"tiny-{seed}") as run:
        info = mlflow.lightgbm.log_model(tiny_booster(seed), name="model",
                                         pip_requirements=["lightgbm"])
    return registry.register_challenger(name, info.model_uri, run.info.run_id, scores, {})


@pytest.fixture(params=["mlflow", "memory"])
def any_registry(request: pytest.FixtureRequest, tmp_path: Path) -> lifecycle.Lifecycle:
    # The in-memory fake must keep the real registry's contract: the same scenario on both.
    if request.param == "memory":
        return InMemoryRegistry()
    return lifecycle.Registry(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(),
                              create=True)


def test_register_promote_reject_and_roll_back(any_registry: lifecycle.Lifecycle) -> None:
    reg, gate = any_registry, rules()
    v1 = register_tiny(reg, "m", 1, metrics(0.40, 0.70))
    assert reg.alias_version("m", lifecycle.CHALLENGER) == v1.version == "1"
    assert reg.alias_version("m", lifecycle.CHAMPION) is None
    assert reg.promote("m", gate, lower_is_better).passed
    assert reg.alias_version("m", lifecycle.CHAMPION) == "1"

    register_tiny(reg, "m", 2, metrics(0.38, 0.75))
    decision = reg.promote("m", gate, lower_is_better)
    assert not decision.passed
    assert reg.alias_version("m", lifecycle.CHAMPION) == "1"

    register_tiny(reg, "m", 3, metrics(0.42, 0.72))
    assert reg.promote("m", gate, lower_is_better).passed
    assert reg.alias_version("m", lifecycle.CHAMPION) == "3"
    assert reg.rollback("m") == "1"
    assert reg.alias_version("m", lifecycle.CHAMPION) == "1"

    assert reg.version_tags("m", "2")["lifecycle.last"].startswith("rejected")
    tags3 = reg.version_tags("m", "3")
    assert tags3["lifecycle.last"].startswith("rolled_back")
    assert any(k.endswith(".promoted") for k in tags3)
    with pytest.raises(lifecycle.RegistryError, match="replaced no earlier champion"):
        reg.rollback("m")


def test_load_by_alias_returns_a_native_booster(any_registry: lifecycle.Lifecycle) -> None:
    register_tiny(any_registry, "m2", 4, metrics(0.4, 0.7))
    loaded = any_registry.load_by_alias("m2", lifecycle.CHALLENGER)  # type: ignore[attr-defined]
    assert isinstance(loaded.booster, lgb.Booster) and loaded.version == "1"
    with pytest.raises(lifecycle.RegistryError, match="train and promote first"):
        any_registry.load_by_alias("m2", lifecycle.CHAMPION)  # type: ignore[attr-defined]


def test_the_registry_leaves_mlflows_global_tracking_uri_alone(
        registry: lifecycle.Registry) -> None:
    from mlflow.tracking._tracking_service import utils

    before = utils._tracking_uri
    register_tiny(registry, "m", 1, metrics(0.4, 0.7))
    registry.promote("m", rules(), lower_is_better)
    registry.load_by_alias("m")
    assert utils._tracking_uri == before  # training's run scoped it, and put it back


def test_the_model_files_checksum_is_recorded_and_a_truncated_copy_refused(
        registry: lifecycle.Registry, tmp_path: Path) -> None:
    register_tiny(registry, "m", 5, metrics(0.4, 0.7))
    stored = next((tmp_path / "art").rglob("model.lgb"))  # the artifact store's copy
    tags = registry.version_tags("m", "1")
    assert tags[lifecycle.SHA256_TAG] == lifecycle.file_sha256(stored)
    assert registry.load_by_alias("m", lifecycle.CHALLENGER).sha256 == tags[lifecycle.SHA256_TAG]
    # Half a model file: LightGBM would abort the process natively (exit 134) on it.
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    with pytest.raises(lifecycle.ModelChecksumMismatch, match="refusing to load it"):
        registry.load_by_alias("m", lifecycle.CHALLENGER)
    stored.write_bytes(b"")
    with pytest.raises(lifecycle.ModelChecksumMismatch):
        registry.load_by_alias("m", lifecycle.CHALLENGER)


def test_a_missing_sqlite_database_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "mlflow.db"
    reader = lifecycle.Registry(f"sqlite:///{missing}")
    for ask in (lambda: reader.alias_version("m", lifecycle.CHAMPION),
                lambda: reader.load_by_alias("m"),
                lambda: reader.promote("m", rules(), lower_is_better),
                reader.require_database):
        with pytest.raises(lifecycle.RegistryMissing, match=str(missing)):
            ask()
    assert not missing.exists() and not missing.parent.exists()
    # training may create it
    missing.parent.mkdir()
    writer = lifecycle.Registry(f"sqlite:///{missing}", create=True)
    assert writer.alias_version("m", lifecycle.CHAMPION) is None
    assert missing.is_file()
    assert reader.alias_version("m", lifecycle.CHAMPION) is None  # it exists now
