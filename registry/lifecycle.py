"""The model lifecycle on MLflow: log, register as challenger, gate, promote, roll back, load.

A `Registry` is one MLflow tracking store and model registry, passed to whoever needs it: nothing
here reads or sets MLflow's process-global tracking URI, except `Registry.run`, which scopes it to
one training run (MLflow's model logging only has the fluent API). `InMemoryRegistry`
(registry/memory.py) is the same lifecycle without MLflow, for unit tests.

Every alias move is recorded as tags on the model version it lands on, so the registry itself
tells why each version is (or stopped being) the champion. The native model file's sha256 is
recorded at registration (tag `model.sha256`) and checked before LightGBM reads any copy of it:
LightGBM aborts the whole process on some truncated files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import lightgbm as lgb
import yaml

from feastflow.errors import (
    ModelChecksumMismatch,
    RegistryError,
    RegistryMissing,
    RegistryUnreachable,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
SHA256_TAG = "model.sha256"  # the native model file's checksum, recorded at registration
REVIEW_FROM_TAG = "decision.review_from"  # the review band's start for the daily budget
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # no such model or alias
log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """The file's sha256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(path: Path, expected: str, what: str) -> None:
    """Raise ModelChecksumMismatch unless `path` has the sha256 `expected` (before LightGBM reads
    it: a truncated file can abort the process natively)."""
    found = file_sha256(path) if path.is_file() else "missing"
    if found != expected:
        raise ModelChecksumMismatch(f"{what}: {path} has sha256 {found}, registered {expected}; "
                                    "refusing to load it")


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI (None for other schemes or in-memory)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return None
    # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db (one slash is the separator)
    return Path(unquote(parsed.path[1:]))


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and where its run lives."""

    name: str
    version: str
    run_id: str


@dataclass(frozen=True)
class GateDecision:
    """Whether a challenger may become champion, and the reasons, in words."""

    passed: bool
    reasons: list[str]


@dataclass
class LoadedModel:
    """A booster loaded from the registry, with its version and the run's metadata."""

    booster: lgb.Booster
    version: str
    run_id: str
    tags: dict[str, str]
    model_file: Path | None = None  # the native model file it was read from
    sha256: str | None = None  # that file's checksum (verified against the registered one)


class ModelRegistry(Protocol):
    """What the server needs of a registry (Registry and InMemoryRegistry both provide it)."""

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points to, or None; RegistryUnreachable if it cannot be asked."""
        ...

    def load_by_alias(self, model_name: str, alias: str = CHAMPION,
                      local_dir: Path | None = None) -> LoadedModel:
        """The aliased version's booster, its file verified against its registered checksum."""
        ...


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


def mlflow_name(metric: str) -> str:
    """A metric name as MLflow accepts it: `@` (ndcg@10) is not allowed, `:` is and no metric
    name uses it, so `ndcg@10` is stored as `ndcg:10` and read back as `ndcg@10`."""
    return metric.replace("@", ":")


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """Metrics as the version tags the gate reads back (`metric.<name>`)."""
    return {f"metric.{mlflow_name(k)}": f"{v:.6f}" for k, v in metrics.items()}


class Lifecycle:
    """Promote, decide, roll back: the lifecycle over a few primitives a backend provides
    (tags of a version, the version of an alias, moving an alias, setting a tag)."""

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        """Every tag of a model version."""
        raise NotImplementedError

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points to, or None; RegistryUnreachable if it cannot be asked."""
        raise NotImplementedError

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point `alias` at `version`."""
        raise NotImplementedError

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        """Set one tag on a model version."""
        raise NotImplementedError

    def version_metrics(self, model_name: str, version: str) -> dict[str, float]:
        """The holdout metrics recorded on a version at registration."""
        tags = self.version_tags(model_name, version)
        return {k.removeprefix("metric.").replace(":", "@"): float(v) for k, v in tags.items()
                if k.startswith("metric.")}

    def promote(self, model_name: str, rules: Any, lower_is_better: Callable[[str], bool],
                version: str | None = None) -> GateDecision:
        """Move `champion` to the challenger (or `version`) if the gate passes on the metrics
        each version recorded at registration; record the decision."""
        candidate = version or self.alias_version(model_name, CHALLENGER)
        if candidate is None:
            raise RegistryError(f"{model_name} has no {CHALLENGER}: run `feastflow train` first")
        current = self.alias_version(model_name, CHAMPION)
        if current == candidate:
            return GateDecision(True, [f"version {candidate} is already {CHAMPION}"])
        champion_metrics = self.version_metrics(model_name, current) if current else None
        return self.decide(model_name, rules, candidate, self.version_metrics(model_name, candidate),
                           current, champion_metrics, lower_is_better)

    def decide(self, model_name: str, rules: Any, candidate: str,
               candidate_metrics: dict[str, float], champion: str | None,
               champion_metrics: dict[str, float] | None, lower_is_better: Callable[[str], bool],
               evidence: dict[str, Any] | None = None) -> GateDecision:
        """Gate `candidate` against `champion` on the given metrics, move the alias if it passes,
        and record the decision, both sets of metrics and `evidence` on both versions."""
        decision = gate(candidate_metrics, champion_metrics, rules, lower_is_better)
        detail = json.dumps({"passed": decision.passed, "reasons": decision.reasons,
                             "previous_champion": champion, "candidate": candidate,
                             "candidate_metrics": candidate_metrics,
                             "champion_metrics": champion_metrics, **(evidence or {})})
        if decision.passed:
            self.set_alias(model_name, CHAMPION, candidate)
            if champion:
                self.set_version_tag(model_name, candidate, "previous_champion", champion)
                self._record(model_name, champion, "replaced", detail)
            self._record(model_name, candidate, "promoted", detail)
        else:
            if champion:
                self._record(model_name, champion, "defended", detail)
            self._record(model_name, candidate, "rejected", detail)
        return decision

    def rollback(self, model_name: str) -> str:
        """Move `champion` back to the version it replaced; return that version."""
        current = self.alias_version(model_name, CHAMPION)
        if current is None:
            raise RegistryError(f"{model_name} has no {CHAMPION} to roll back")
        previous = self.version_tags(model_name, current).get("previous_champion")
        if not previous:
            raise RegistryError(f"{model_name} v{current} replaced no earlier champion; nothing "
                                "to roll back to")
        self.set_alias(model_name, CHAMPION, previous)
        self._record(model_name, current, "rolled_back", f"{CHAMPION} moved back to v{previous}")
        self._record(model_name, previous, "restored", f"{CHAMPION} restored from v{current}")
        return previous

    def _record(self, model_name: str, version: str, event: str, detail: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.set_version_tag(model_name, version, f"lifecycle.{stamp}.{event}", detail)
        self.set_version_tag(model_name, version, "lifecycle.last", f"{event}: {detail}")


class Registry(Lifecycle):
    """One MLflow tracking store and model registry (the same URI), through its own client.

    `create=False` (every reader: server, evaluate, promote, monitor) refuses a SQLite URI whose
    file does not exist, where MLflow would silently create an empty registry; only training
    (`create=True`) may create it.
    """

    def __init__(self, tracking_uri: str, artifacts_uri: str | None = None, *,
                 create: bool = False) -> None:
        self.tracking_uri = tracking_uri
        self.artifacts_uri = artifacts_uri  # experiments' artifact root; None: the server's
        self.create = create
        self.database = sqlite_path(tracking_uri)
        self._client: Any = None

    def require_database(self) -> None:
        """RegistryMissing if the URI is a SQLite file that does not exist (and may not be made)."""
        if self.database is not None and not self.create and not self.database.is_file():
            raise RegistryMissing(
                f"the MLflow tracking database {self.database} does not exist (tracking URI "
                f"{self.tracking_uri}): check FEASTFLOW_MLFLOW_TRACKING_URI and FEASTFLOW_HOME, or "
                "run `feastflow train` to create it")

    @property
    def client(self) -> Any:
        """The MlflowClient of this URI (checked and made on first use)."""
        self.require_database()
        if self._client is None:
            from mlflow import MlflowClient  # heavy: only once the registry is really asked

            self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                        registry_uri=self.tracking_uri)
        return self._client

    def experiment_id(self, experiment: str) -> str:
        """The experiment's id, created (artifacts under `<artifacts_uri>/<experiment>`) if new."""
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            return str(found.experiment_id)
        location = f"{self.artifacts_uri}/{experiment}" if self.artifacts_uri else None
        return str(self.client.create_experiment(experiment, artifact_location=location))

    @contextlib.contextmanager
    def run(self, experiment: str, run_name: str) -> Iterator[Any]:
        """An active MLflow run in `experiment`, for MLflow's fluent logging (`mlflow.log_*`,
        `mlflow.lightgbm.log_model`): the process-global tracking URI is this registry's for the
        run's duration only, then restored."""
        import mlflow
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        experiment_id = self.experiment_id(experiment)
        with _use_tracking_uri(self.tracking_uri), mlflow.start_run(
                experiment_id=experiment_id, run_name=run_name) as active:
            yield active

    def _download(self, artifact_uri: str, dst: Path) -> Path:
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.tracking_uri,
            registry_uri=self.tracking_uri))

    def download_version(self, model_name: str, version: str, dst: Path) -> Path:
        """Download a model version's files (MLmodel, the native model file) to `dst`; return the
        folder. No check: `load_by_alias` verifies the model file before reading it."""
        return self._download(self.client.get_model_version_download_uri(model_name, version), dst)

    def download_run_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        """Download a run's artifact folder or file to `dst`; return its local path."""
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=self.tracking_uri,
            registry_uri=self.tracking_uri))

    def log_lightgbm(self, run_id: str, booster: lgb.Booster, categorical: list[str],
                     signature: Any, input_example: Any, pip_requirements: list[str]) -> str:
        """Log the booster as an MLflow model of the run (its native text file, the `lightgbm`
        flavor the server reads) whose `python_function` flavor is registry/lgb_pyfunc.py, so that
        MLflow users can score it with categorical inputs as strings; return its `models:/` URI."""
        import mlflow.lightgbm
        from mlflow.entities import LoggedModelOutput
        from mlflow.models import Model

        from registry import lgb_pyfunc

        client = self.client
        experiment_id = client.get_run(run_id).info.experiment_id
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.lightgbm.save_model(
                booster, str(path), signature=signature, input_example=input_example,
                pip_requirements=pip_requirements, code_paths=[lgb_pyfunc.__file__],
                mlflow_model=Model(run_id=run_id, model_id=logged.model_id, artifact_path="model"))
            mlmodel = yaml.safe_load((path / "MLmodel").read_text())
            mlmodel["flavors"]["python_function"]["loader_module"] = "lgb_pyfunc"
            (path / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
            (path / lgb_pyfunc.CATEGORICAL_FILE).write_text(json.dumps(categorical))
            client.log_model_artifacts(logged.model_id, str(path))
        client.finalize_logged_model(logged.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        return f"models:/{logged.model_id}"

    def register_challenger(self, model_name: str, model_uri: str, run_id: str,
                            metrics: dict[str, float], tags: dict[str, str]) -> RegisteredVersion:
        """Register the logged model, tag it with its metrics, tags and its model file's sha256,
        and alias it `challenger`."""
        from mlflow.exceptions import MlflowException

        client = self.client
        with contextlib.suppress(MlflowException):  # it already exists
            client.create_registered_model(model_name)
        # MLflow's SQL registry resolves a `models:/<model id>` source against the process-global
        # tracking URI (its own TODO): give it the logged model's files, linked by model_id.
        model_id = _logged_model_id(model_uri)
        source = (client.get_logged_model(model_id).artifact_location if model_id else model_uri)
        with tempfile.TemporaryDirectory() as tmp:  # the checksum of what the store holds
            sha256 = file_sha256(_native_model_file(self._download(source, Path(tmp)),
                                                    model_name, "new"))
        created = client.create_model_version(model_name, source, run_id, model_id=model_id)
        version = str(created.version)
        for key, value in {**tags, **metric_tags(metrics), SHA256_TAG: sha256}.items():
            client.set_model_version_tag(model_name, version, key, str(value))
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        self._record(model_name, version, "registered", f"alias {CHALLENGER}")
        return RegisteredVersion(model_name, version, run_id)

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        """Every tag of a model version."""
        return dict(self.client.get_model_version(model_name, version).tags)

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point `alias` at `version`."""
        self.client.set_registered_model_alias(model_name, alias, version)

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        """Set one tag on a model version."""
        self.client.set_model_version_tag(model_name, version, key, value)

    def _version_by_alias(self, model_name: str, alias: str) -> Any:
        """The aliased ModelVersion, None when there is no such model or alias; a registry that
        cannot be asked raises RegistryUnreachable."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model_name, alias)
        except RegistryError:
            raise
        except MlflowException as e:
            if e.error_code in _NOT_FOUND:
                return None
            raise RegistryUnreachable(f"the model registry did not answer: {e}") from e
        except Exception as e:  # a backend that cannot be reached raises its own errors
            raise RegistryUnreachable(f"the model registry did not answer: {e}") from e

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points to, or None; RegistryUnreachable if the registry is down."""
        mv = self._version_by_alias(model_name, alias)
        return None if mv is None else str(mv.version)

    def load_by_alias(self, model_name: str, alias: str = CHAMPION,
                      local_dir: Path | None = None) -> LoadedModel:
        """Load the aliased version from LightGBM's native text file (never a pickle), verified
        against the sha256 recorded at registration before LightGBM reads it.

        With `local_dir`, the version's files are downloaded there and stay (a last good copy).
        """
        mv = self._version_by_alias(model_name, alias)
        if mv is None:
            raise RegistryError(f"{model_name}@{alias} does not exist: train and promote first")
        version, tags = str(mv.version), dict(mv.tags)
        with contextlib.ExitStack() as stack:
            target = local_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            target.mkdir(parents=True, exist_ok=True)
            try:
                folder = self.download_version(model_name, version, target)
            except Exception as e:  # the artifact store is down, or the files are gone
                raise RegistryUnreachable(f"{model_name} v{version}: its files could not be "
                                          f"downloaded: {e}") from e
            model_file = _native_model_file(folder, model_name, version)
            sha256 = _checked_sha256(model_file, tags, f"{model_name} v{version}")
            booster = lgb.Booster(model_file=str(model_file))
        warn_on_version_mismatch(tags)
        return LoadedModel(booster, version, mv.run_id, tags,
                           model_file if local_dir else None, sha256)


ARTIFACT_SHA256_TAG = "artifact.{name}.sha256"  # a version's extra file, checked at load


def artifact_tags(folder: Path, prefix: str) -> dict[str, str]:
    """The sha256 of every file of an artifact folder as version tags (`artifact.<prefix>/<file>
    .sha256`): what `load_version_artifacts` checks."""
    return {ARTIFACT_SHA256_TAG.format(name=f"{prefix}/{path.relative_to(folder).as_posix()}"):
            file_sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()}


def load_version_artifacts(registry: Registry, model_name: str, alias: str, prefix: str,
                           dst: Path) -> tuple[str, Path]:
    """Download the run artifacts under `prefix` of the aliased version (files logged beside its
    model: embeddings, an index), each checked against the sha256 tagged at registration; the
    version and the local folder. The alias moves them with the model: a rollback rolls back
    both."""
    mv = registry._version_by_alias(model_name, alias)
    if mv is None:
        raise RegistryError(f"{model_name}@{alias} does not exist: train and promote first")
    version, tags = str(mv.version), dict(mv.tags)
    try:
        folder = registry.download_run_artifacts(mv.run_id, prefix, dst)
    except Exception as e:
        raise RegistryUnreachable(f"{model_name} v{version}: its {prefix} artifacts could not be "
                                  f"downloaded: {e}") from e
    expected = {k: v for k, v in tags.items() if k.startswith(f"artifact.{prefix}/")}
    if not expected:
        raise RegistryError(f"{model_name} v{version} registered no {prefix} artifacts")
    for key, sha256 in expected.items():
        name = key.removeprefix("artifact.").removesuffix(".sha256")
        verify_model_file(folder.parent / name, sha256, f"{model_name} v{version} {name}")
    return version, folder


def _checked_sha256(model_file: Path, tags: dict[str, str], what: str) -> str:
    """The file's sha256, which must be the registered one (a version registered before
    checksums were recorded has none: loaded, with a warning)."""
    expected = tags.get(SHA256_TAG)
    if expected is None:
        log.warning("%s has no registered %s (registered before checksums): its file cannot be "
                    "verified", what, SHA256_TAG)
        return file_sha256(model_file)
    verify_model_file(model_file, expected, what)
    return expected


def _native_model_file(folder: Path, model_name: str, version: str) -> Path:
    """The LightGBM text file of a downloaded MLflow model folder; a pickled model is refused."""
    flavor = yaml.safe_load((folder / "MLmodel").read_text())["flavors"].get("lightgbm", {})
    if flavor.get("model_class") != "lightgbm.basic.Booster":
        raise RegistryError(f"{model_name} v{version} is not a LightGBM Booster "
                            f"({flavor.get('model_class')}): refusing to unpickle it")
    return folder / flavor["data"]


def _logged_model_id(model_uri: str) -> str | None:
    # MLflow 3 logs models as `models:/<model id>`; the version links to it.
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest.startswith("m-") and "/" not in rest else None


def warn_on_version_mismatch(tags: dict[str, str]) -> None:
    """Log a warning for each library whose trained version differs from the installed one."""
    import feast

    for lib, installed in (("lightgbm", lgb.__version__), ("feast", feast.__version__)):
        trained = tags.get(f"lib.{lib}")
        if trained and trained != installed:
            log.warning("model trained with %s %s, serving with %s", lib, trained, installed)
