"""The models the server holds: champion (and challenger), hot-swapped from the registry.

A swap builds the new scorer completely (download, load) off the event loop, then
replaces one reference: requests already scoring finish on the old model, later ones use the
new one, none fails or waits. Every loaded version is also kept on local disk
(`<home>/models/<model>/<alias>/`) with the sha256 registered for it, so a restart while the
registry is down still serves the last good model. Every file is checked against its registered
sha256 before LightGBM reads it (LightGBM aborts the process on some truncated files): a bad copy
is refused, the server keeps what it serves and says so (`model_error`, a /readyz reason).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb

from feastflow.embeddings import ARTIFACT_DIR
from feastflow.retrieval_scoring import RetrievalRanker
from feastflow.retrieval_serving import RetrievalArtifacts
from feastflow.scoring import EventScorer, FeaturePlan, Ranker, scorer_for
from feastflow.spec import ModelSpec
from registry import lifecycle
from registry.lifecycle import (
    REVIEW_FROM_TAG,
    ModelChecksumMismatch,
    ModelRegistry,
    Registry,
    verify_model_file,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """One loaded variant: its alias, registry version and scorer (a Ranker for a ranking, an
    EventScorer for a per-event task)."""

    variant: str  # champion | challenger
    version: str
    run_id: str
    scorer: Ranker | EventScorer | RetrievalRanker
    source: str  # registry | disk
    loaded_at: float
    review_from: float | None = None  # the version's review band start for the daily budget

    @property
    def ranker(self) -> Ranker:
        """The scorer of a ranking use case."""
        return self.scorer  # type: ignore[return-value]

    @property
    def retrieval(self) -> RetrievalRanker:
        """The scorer of a retrieval-then-rank use case (its artifacts with it)."""
        return self.scorer  # type: ignore[return-value]


class ModelHolder:
    """Loads, keeps and swaps the served variants; the registry is asked only off the hot path."""

    def __init__(self, spec: ModelSpec, plan: FeaturePlan, aliases: dict[str, str],
                 models_dir: Path, registry: ModelRegistry) -> None:
        self.spec = spec
        self.plan = plan
        self.aliases = aliases  # variant -> registry alias
        self.models_dir = models_dir / spec.registered_model_name
        self.registry = registry
        self.models: dict[str, ServedModel] = {}
        self.registry_error: str | None = None
        self.refused: dict[str, str] = {}  # variant -> why its newest copy was refused (a code)
        self.on_swap: list[Callable[[ServedModel, ServedModel | None], None]] = []

    def get(self, variant: str) -> ServedModel | None:
        """The served model of a variant, if any."""
        return self.models.get(variant)

    def load_initial(self) -> None:
        """At start: every variant from the registry, or from its last good copy on disk."""
        for variant in self.aliases:
            try:
                candidate = self._from_registry(variant, known=None)
            except ModelChecksumMismatch as e:  # the registry's copy is bad: try the last good one
                self._refuse(variant, e)
                candidate = self._from_disk(variant)
            except lifecycle.RegistryUnreachable as e:
                self.registry_error = str(e)
                candidate = self._from_disk(variant)
            except lifecycle.RegistryError as e:
                log.warning("no %s model: %s", variant, e)
                candidate = None
            if candidate is not None:
                self._install(candidate)

    def check_registry(self) -> list[ServedModel]:
        """Blocking (run it in a thread): load every variant whose alias moved; do not swap yet."""
        changed: list[ServedModel] = []
        for variant in self.aliases:
            current = self.models.get(variant)
            try:
                candidate = self._from_registry(variant, known=current.version if current else None)
            except ModelChecksumMismatch as e:  # keep serving what is loaded
                self._refuse(variant, e)
                continue
            except lifecycle.RegistryUnreachable as e:
                self.registry_error = str(e)
                log.warning("registry unreachable, keeping the loaded models: %s", e)
                return changed
            except lifecycle.RegistryError:  # the alias is gone: a challenger stops being served
                if variant != "champion" and self.models.pop(variant, None) is not None:
                    log.info("%s alias removed: no longer served", variant)
                continue
            if candidate is not None:  # None: the alias still points at the loaded version
                changed.append(candidate)
        self.registry_error = None
        return changed

    def install(self, models: list[ServedModel]) -> None:
        """Swap the given models in (call on the event loop)."""
        for model in models:
            self._install(model)

    def _install(self, model: ServedModel) -> None:
        old = self.models.get(model.variant)
        self.models[model.variant] = model
        log.info("serving %s v%s (from %s)", model.variant, model.version, model.source)
        for callback in self.on_swap:
            callback(model, old)

    @property
    def model_error(self) -> str | None:
        """A reason code while a variant's copy stands refused (`model_checksum_mismatch`)."""
        return next(iter(self.refused.values()), None)

    def _refuse(self, variant: str, error: ModelChecksumMismatch) -> None:
        self.refused[variant] = error.reason
        log.error("%s model refused, keeping what is served: %s", variant, error)

    def _from_registry(self, variant: str, known: str | None) -> ServedModel | None:
        # A poll asks each alias's version and nothing else (it runs on a thread and takes the
        # GIL from the event loop: measured, 76 answers over 5 ms within 0.2 s of a poll that also
        # queried the experiment, at 500 requests/s).
        alias = self.aliases[variant]
        name = self.spec.registered_model_name
        version = self.registry.alias_version(name, alias)  # RegistryUnreachable when it is down
        if version is None:
            raise lifecycle.RegistryError(f"{name}@{alias} does not exist")
        if version == known:
            return None
        with tempfile.TemporaryDirectory(dir=self._ensure_dir()) as tmp:
            loaded = self.registry.load_by_alias(name, alias, local_dir=Path(tmp))
            if loaded.model_file is None or loaded.sha256 is None:
                raise lifecycle.RegistryError(f"{name}@{alias}: the registry kept no model file")
            review_from = _review_from(loaded.tags)
            artifacts = self._artifacts(alias, loaded.version, Path(tmp))
            model = self._build(variant, loaded.version, loaded.run_id, loaded.booster, "registry",
                                artifacts, review_from)
            self._save(variant, loaded.model_file, loaded.version, loaded.run_id, loaded.sha256,
                       artifacts, review_from)
        self.refused.pop(variant, None)  # a verified copy replaced whatever was refused
        return model

    def _from_disk(self, variant: str) -> ServedModel | None:
        folder = self.models_dir / self.aliases[variant]
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            log.error("registry unreachable and no last good %s model under %s", variant, folder)
            return None
        meta = json.loads(meta_path.read_text())
        try:  # a copy saved without a checksum cannot be verified: refused as well
            verify_model_file(folder / "model.lgb", meta.get("sha256", "none recorded"),
                              f"last good {variant} v{meta['version']}")
        except ModelChecksumMismatch as e:
            self._refuse(variant, e)
            return None
        booster = lgb.Booster(model_file=str(folder / "model.lgb"))
        log.warning("registry unreachable: serving %s v%s from %s", variant, meta["version"], folder)
        artifacts = folder / ARTIFACT_DIR if self.spec.retrieval is not None else None
        return self._build(variant, meta["version"], meta["run_id"], booster, "disk", artifacts,
                           meta.get("review_from"))

    def _artifacts(self, alias: str, version: str, tmp: Path) -> Path | None:
        """A retrieval shape's artifacts of the version just loaded (checked against the sha256
        registered with it): the model and its index move together."""
        if self.spec.retrieval is None:
            return None
        if not isinstance(self.registry, Registry):
            raise lifecycle.RegistryError("this registry cannot serve a retrieval shape's artifacts")
        name = self.spec.registered_model_name
        found, folder = lifecycle.load_version_artifacts(self.registry, name, alias, ARTIFACT_DIR,
                                                         tmp / "artifacts")
        if found != version:  # the alias moved between the two downloads: the next poll retries
            raise lifecycle.RegistryError(f"{name}@{alias} moved from v{version} to v{found} "
                                          "while loading")
        return folder

    def _build(self, variant: str, version: str, run_id: str, booster: Any, source: str,
               artifacts: Path | None = None, review_from: float | None = None) -> ServedModel:
        scorer: Ranker | EventScorer | RetrievalRanker
        if artifacts is not None:
            scorer = RetrievalRanker(self.spec, self.plan, booster,
                                     RetrievalArtifacts.load(artifacts))
        else:
            scorer = scorer_for(self.spec, self.plan, booster)
        return ServedModel(variant, version, run_id, scorer, source, time.time(), review_from)

    def _save(self, variant: str, model_file: Path, version: str, run_id: str, sha256: str,
              artifacts: Path | None = None, review_from: float | None = None) -> None:
        # Write a complete folder next to the old one, then swap names: never a half copy.
        target = self.models_dir / self.aliases[variant]
        staging = Path(tempfile.mkdtemp(dir=self._ensure_dir(), prefix=".staging-"))
        shutil.copyfile(model_file, staging / "model.lgb")
        if artifacts is not None:
            shutil.copytree(artifacts, staging / ARTIFACT_DIR)
        (staging / "meta.json").write_text(json.dumps(
            {"version": version, "run_id": run_id, "sha256": sha256, "saved_at": time.time(),
             "review_from": review_from}))
        old = target.with_name(f".old-{target.name}")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    def _ensure_dir(self) -> Path:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return self.models_dir


def _review_from(tags: dict[str, str]) -> float | None:
    # set by training when the spec has a daily review budget (pipelines/training.py)
    value = tags.get(REVIEW_FROM_TAG)
    return None if value is None else float(value)


def serving_registry(tracking_uri: str, artifacts_uri: str, explicit: bool) -> Registry:
    """The server's registry. A tracking URI set explicitly that names a SQLite file which does
    not exist is refused here, at start (RegistryMissing names the path): MLflow would create an
    empty registry and every answer would be a default. The home's own default database may not
    exist yet (nothing trained): then no model is loaded, and none is created."""
    registry = Registry(tracking_uri, artifacts_uri)
    if explicit:
        registry.require_database()
    return registry
