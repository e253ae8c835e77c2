"""The model lifecycle on MLflow: log, register as challenger, gate, promote, roll back, load.

Every alias move is recorded as tags on the model version it lands on, so the registry itself
tells why each version is (or stopped being) the champion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import mlflow.artifacts
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model or alias
log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry does not hold what was asked for; the message says what to run first."""


class RegistryUnreachable(RegistryError):
    """The registry could not be asked (server down, database file missing or locked)."""


def configure(tracking_uri: str, artifacts_uri: str, experiment: str) -> str:
    """Point MLflow at the tracking store and make sure the experiment exists; return its id."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = client.create_experiment(
            experiment, artifact_location=f"{artifacts_uri}/{experiment}"
        )
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and where its run lives."""

    name: str
    version: str
    run_id: str


def register_challenger(model_name: str, model_uri: str, run_id: str,
                        metrics: dict[str, float], tags: dict[str, str]) -> RegisteredVersion:
    """Register the run's model, tag it with its metrics and tags, and alias it `challenger`."""
    client = MlflowClient()
    with contextlib.suppress(MlflowException):  # it already exists
        client.create_registered_model(model_name)
    version = mlflow.register_model(model_uri, model_name).version
    for key, value in {**tags, **{f"metric.{k}": f"{v:.6f}" for k, v in metrics.items()}}.items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    _record(client, model_name, version, "registered", f"alias {CHALLENGER}")
    return RegisteredVersion(model_name, str(version), run_id)


def version_metrics(model_name: str, version: str) -> dict[str, float]:
    """The holdout metrics recorded on a version at registration."""
    tags = MlflowClient().get_model_version(model_name, version).tags
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def _version_by_alias(model_name: str, alias: str) -> ModelVersion | None:
    """The aliased model version, None when there is no such model or alias; a registry that
    cannot be asked raises RegistryUnreachable."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as e:
        if e.error_code in _NOT_FOUND:
            return None
        raise RegistryUnreachable(f"the model registry did not answer: {e}") from e
    except Exception as e:  # a backend that cannot be reached raises its own errors
        raise RegistryUnreachable(f"the model registry did not answer: {e}") from e


def alias_version(model_name: str, alias: str) -> str | None:
    """The version an alias points to, or None; RegistryUnreachable if the registry is down."""
    mv = _version_by_alias(model_name, alias)
    return None if mv is None else str(mv.version)


@dataclass(frozen=True)
class GateDecision:
    """Whether a challenger may become champion, and the reasons, in words."""

    passed: bool
    reasons: list[str]


def gate(challenger: dict[str, float], champion: dict[str, float] | None, rules: Any,
         lower_is_better: Callable[[str], bool]) -> GateDecision:
    """The promotion gate, in the spec's metric-neutral terms (`rules`: min_gain, max_drop,
    must_beat_baselines, beat_baselines_on).

    The first model must beat every baseline (the metrics `<baseline>.<metric>` it recorded) on
    `beat_baselines_on`; once there is a champion it is the bar: a challenger that beats it but
    not a baseline still replaces a worse model (measured on the flagship: after a drift toward
    habits, most-recently-used led both).
    """
    reasons: list[str] = []
    passed = True

    def better(metric: str, ours: float, theirs: float, margin: float = 0.0) -> bool:
        # ours improves on theirs by at least `margin` (negative: may be worse by -margin)
        gain = theirs - ours if lower_is_better(metric) else ours - theirs
        return gain >= margin

    if rules.must_beat_baselines and champion is None:
        baselines = sorted({k.split(".", 1)[0] for k in challenger if "." in k})
        for metric in rules.beat_baselines_on:
            for baseline in baselines:
                theirs = challenger.get(f"{baseline}.{metric}")
                if theirs is None:
                    continue
                ours = challenger[metric]
                ok = better(metric, ours, theirs) and ours != theirs
                passed &= ok
                reasons.append(f"{metric} {ours:.4f} {'beats' if ok else 'does not beat'} "
                               f"{baseline} {theirs:.4f}")
    if champion is not None:
        for metric, margin in rules.min_gain.items():
            ok = better(metric, challenger[metric], champion[metric], margin)
            passed &= ok
            reasons.append(f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
                           f"(needed gain {margin}): {'ok' if ok else 'fails'}")
        for metric, margin in rules.max_drop.items():
            ok = better(metric, challenger[metric], champion[metric], -margin)
            passed &= ok
            reasons.append(f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f} "
                           f"(allowed drop {margin}): {'ok' if ok else 'fails'}")
    return GateDecision(passed, reasons)


def promote(model_name: str, rules: Any, lower_is_better: Callable[[str], bool],
            version: str | None = None) -> GateDecision:
    """Move `champion` to the challenger (or `version`) if the gate passes on the metrics each
    version recorded at registration; record the decision."""
    candidate = version or alias_version(model_name, CHALLENGER)
    if candidate is None:
        raise RegistryError(f"{model_name} has no {CHALLENGER}: run `feastflow train` first")
    current = alias_version(model_name, CHAMPION)
    if current == candidate:
        return GateDecision(True, [f"version {candidate} is already {CHAMPION}"])
    champion_metrics = version_metrics(model_name, current) if current else None
    return decide(model_name, rules, candidate, version_metrics(model_name, candidate),
                  current, champion_metrics, lower_is_better)


def decide(model_name: str, rules: Any, candidate: str, candidate_metrics: dict[str, float],
           champion: str | None, champion_metrics: dict[str, float] | None,
           lower_is_better: Callable[[str], bool],
           evidence: dict[str, Any] | None = None) -> GateDecision:
    """Gate `candidate` against `champion` on the given metrics, move the alias if it passes,
    and record the decision, both sets of metrics and `evidence` on both versions."""
    client = MlflowClient()
    decision = gate(candidate_metrics, champion_metrics, rules, lower_is_better)
    detail = json.dumps({"passed": decision.passed, "reasons": decision.reasons,
                         "previous_champion": champion, "candidate": candidate,
                         "candidate_metrics": candidate_metrics,
                         "champion_metrics": champion_metrics, **(evidence or {})})
    if decision.passed:
        client.set_registered_model_alias(model_name, CHAMPION, candidate)
        if champion:
            client.set_model_version_tag(model_name, candidate, "previous_champion", champion)
            _record(client, model_name, champion, "replaced", detail)
        _record(client, model_name, candidate, "promoted", detail)
    else:
        if champion:
            _record(client, model_name, champion, "defended", detail)
        _record(client, model_name, candidate, "rejected", detail)
    return decision


def rollback(model_name: str) -> str:
    """Move `champion` back to the version it replaced; return that version."""
    client = MlflowClient()
    current = alias_version(model_name, CHAMPION)
    if current is None:
        raise RegistryError(f"{model_name} has no {CHAMPION} to roll back")
    previous = client.get_model_version(model_name, current).tags.get("previous_champion")
    if not previous:
        raise RegistryError(f"{model_name} v{current} replaced no earlier champion; nothing to "
                            "roll back to")
    client.set_registered_model_alias(model_name, CHAMPION, previous)
    _record(client, model_name, current, "rolled_back", f"{CHAMPION} moved back to v{previous}")
    _record(client, model_name, previous, "restored", f"{CHAMPION} restored from v{current}")
    return previous


def _record(client: MlflowClient, model_name: str, version: str, event: str, detail: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    client.set_model_version_tag(model_name, version, f"lifecycle.{stamp}.{event}", detail)
    client.set_model_version_tag(model_name, version, "lifecycle.last", f"{event}: {detail}")


@dataclass
class LoadedModel:
    """A booster loaded from the registry, with its version and the run's metadata."""

    booster: lgb.Booster
    version: str
    run_id: str
    tags: dict[str, str]
    model_file: Path | None = None  # the native model file it was read from


def load_by_alias(model_name: str, alias: str = CHAMPION, local_dir: Path | None = None
                  ) -> LoadedModel:
    """Load the aliased version from LightGBM's native text file (never a pickle).

    With `local_dir`, the version's files are downloaded there and stay (a last good copy).
    """
    mv = _version_by_alias(model_name, alias)
    if mv is None:
        raise RegistryError(f"{model_name}@{alias} does not exist: train and promote first")
    with contextlib.ExitStack() as stack:
        target = local_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        target.mkdir(parents=True, exist_ok=True)
        folder = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{model_name}/{mv.version}", dst_path=str(target)))
        flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"].get("lightgbm", {})
        if flavor.get("model_class") != "lightgbm.basic.Booster":
            raise RegistryError(f"{model_name} v{mv.version} is not a LightGBM Booster "
                                f"({flavor.get('model_class')}): refusing to unpickle it")
        model_file = folder / flavor["data"]
        booster = lgb.Booster(model_file=str(model_file))
    _warn_on_version_mismatch(mv.tags)
    return LoadedModel(booster, str(mv.version), mv.run_id, dict(mv.tags),
                       model_file if local_dir else None)


def _warn_on_version_mismatch(tags: dict[str, str]) -> None:
    import feast

    for lib, installed in (("lightgbm", lgb.__version__), ("feast", feast.__version__)):
        trained = tags.get(f"lib.{lib}")
        if trained and trained != installed:
            log.warning("model trained with %s %s, serving with %s", lib, trained, installed)
