"""An in-memory model registry for unit tests: the lifecycle of `Registry` without MLflow.

Promote, decide and roll back are the real ones (inherited); only the storage is a dict. Models
are kept as LightGBM text, so a load goes through the same checksum check as a real one.
Integration tests use the real MLflow registry.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import lightgbm as lgb

from registry.lifecycle import (
    CHALLENGER,
    CHAMPION,
    SHA256_TAG,
    Lifecycle,
    LoadedModel,
    RegisteredVersion,
    RegistryError,
    RegistryUnreachable,
    _checked_sha256,
    metric_tags,
)


class InMemoryRegistry(Lifecycle):
    """Versions, tags and aliases in dicts; `down = True` makes every call RegistryUnreachable;
    `calls` lists the names of the methods asked (to check what a poll costs)."""

    def __init__(self) -> None:
        self.texts: dict[tuple[str, str], str] = {}  # (model, version) -> LightGBM model text
        self.tags: dict[tuple[str, str], dict[str, str]] = {}
        self.aliases: dict[tuple[str, str], str] = {}  # (model, alias) -> version
        self.down = False
        self.calls: list[str] = []

    def _ask(self, method: str) -> None:
        self.calls.append(method)
        if self.down:
            raise RegistryUnreachable("the model registry did not answer: it is down (fake)")

    def register(self, model_name: str, booster: lgb.Booster, run_id: str = "run-0",
                 metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None,
                 alias: str = CHALLENGER) -> RegisteredVersion:
        """Add a version holding `booster`, tagged and checksummed as `register_challenger` does,
        and point `alias` at it."""
        self._ask("register")
        version = str(1 + sum(1 for name, _ in self.texts if name == model_name))
        text = booster.model_to_string()
        self.texts[model_name, version] = text
        sha256 = hashlib.sha256(text.encode()).hexdigest()
        self.tags[model_name, version] = {**(tags or {}), **metric_tags(metrics or {}),
                                          SHA256_TAG: sha256, "run_id": run_id}
        self.aliases[model_name, alias] = version
        return RegisteredVersion(model_name, version, run_id)

    def version_tags(self, model_name: str, version: str) -> dict[str, str]:
        """Every tag of a model version."""
        self._ask("version_tags")
        if (model_name, version) not in self.tags:
            raise RegistryError(f"{model_name} v{version} does not exist")
        return dict(self.tags[model_name, version])

    def alias_version(self, model_name: str, alias: str) -> str | None:
        """The version an alias points to, or None."""
        self._ask("alias_version")
        return self.aliases.get((model_name, alias))

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        """Point `alias` at `version`."""
        self._ask("set_alias")
        self.aliases[model_name, alias] = version

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None:
        """Set one tag on a model version."""
        self._ask("set_version_tag")
        self.tags[model_name, version][key] = value

    def load_by_alias(self, model_name: str, alias: str = CHAMPION,
                      local_dir: Path | None = None) -> LoadedModel:
        """The aliased version's booster, read from a file checked against its checksum."""
        self._ask("load_by_alias")
        version = self.aliases.get((model_name, alias))
        if version is None:
            raise RegistryError(f"{model_name}@{alias} does not exist: train and promote first")
        tags = dict(self.tags[model_name, version])
        with tempfile.TemporaryDirectory() as tmp:
            folder = local_dir or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            model_file = folder / "model.lgb"
            model_file.write_text(self.texts[model_name, version])
            sha256 = _checked_sha256(model_file, tags, f"{model_name} v{version}")
            booster = lgb.Booster(model_file=str(model_file))
        return LoadedModel(booster, version, tags["run_id"], tags,
                           model_file if local_dir else None, sha256)
