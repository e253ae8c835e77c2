"""The model spec: a use case declared as data (`feature_repo/<use_case>/model.yaml`).

Pipelines read the spec and never name a use case; adding one means adding a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventLogSpec(_Strict):
    """Which columns of the raw event log are the entity, the predicted item and the time."""

    entity: str
    item: str
    timestamp: str = "timestamp"
    context: list[str] = Field(default_factory=list, description="request-time columns")
    example_context: dict[str, Any] = Field(
        default_factory=dict, description="a typical request context (server warm-up, docs)"
    )


class FeatureSpec(_Strict):
    """Where the batch feature SQL lives and which Feast feature services the model reads."""

    sql_dir: str = "features"
    entity_service: str = Field(description="stage 1: per-entity features (candidate lists)")
    ranking_service: str = Field(description="stage 2: per entity-item-context features")
    entity_join_keys: dict[str, str] = Field(description="stage-1 join key -> value source")
    # stage-2 join key -> where its value comes from: "item", "context:<col>",
    # "time:hour_of_day" / "time:is_weekend", or "feature:<feature name from stage 1>"
    join_keys: dict[str, str]
    # request-source fields of the on-demand views -> same sources as join_keys
    request_fields: dict[str, str] = Field(default_factory=dict)


class CandidateSpec(_Strict):
    """Candidate generation: the union of stage-1 list features, each truncated, in order."""

    lists: dict[str, int] = Field(description="list feature -> how many of its first items")
    fallback_list: str = Field(description="the list that answers for an unknown entity")
    max_candidates: int = 20
    static_default: list[str] = Field(
        default_factory=list, description="the last fallback: items to answer when nothing else can"
    )

    @model_validator(mode="after")
    def _fallback_is_a_list(self) -> CandidateSpec:
        if self.fallback_list not in self.lists:
            raise ValueError(f"fallback_list {self.fallback_list!r} is not one of the lists")
        return self


class RealtimeTableSpec(_Strict):
    """One real-time feature table: the function that computes its row, its table and push source."""

    function: str = Field(description="name of the function in the use case's realtime module")
    table: str = Field(description="batch table `<table>.parquet` the feature view reads")
    push_source: str = Field(description="Feast push source the stream processor writes to")


class RealtimeSpec(_Strict):
    """Features updated at every event, from ONE implementation in `<use case>/<module>.py`.

    The batch pipeline folds the event log through it for training; the stream processor folds
    each arriving event through it and pushes the result to the online store.
    """

    module: str = "realtime"
    window_events: int = Field(default=20, ge=1, description="last events kept per entity")
    entity_table: RealtimeTableSpec = Field(description="one row per entity: f(last events)")
    freshness_feature: str | None = Field(
        default=None, description="`view:feature` holding the entity's last event time in Unix "
        "seconds: replays and the demo read it to know when an event is online")
    item_table: RealtimeTableSpec | None = Field(
        default=None, description="one row per (entity, item): f(the item's last event time)")


class ModelAlgoSpec(_Strict):
    """The learner and its parameters."""

    algorithm: Literal["lightgbm_lambdarank"] = "lightgbm_lambdarank"
    params: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: int = 300
    categorical: list[str] = Field(default_factory=list)
    extra_features: list[str] = Field(
        default_factory=list, description="model inputs that are not Feast features"
    )


class SplitSpec(_Strict):
    """Time-based split: the last `holdout_days` are never seen by training.

    Training labels start `warmup_days` after the first event, so that their features have
    some history behind them (a 28-day window computed over one day of data is noise).
    """

    holdout_days: int = 14
    train_days: int = 28
    warmup_days: int = 7
    max_train_events: int = 8000
    max_holdout_events: int = 3000
    seed: int = 13


class GateSpec(_Strict):
    """Promotion gate: a challenger may lose at most `max_top1_drop` of top-1 and must win at
    least `min_top4_gain` of top-4 against the champion; the first model must beat the
    baselines (`must_beat_baselines`)."""

    max_top1_drop: float = 0.0
    min_top4_gain: float = 0.0
    must_beat_baselines: bool = True


class MonitorSpec(_Strict):
    """What `feastflow monitor` computes over served requests, and where it raises an alert."""

    window_days: int = Field(default=7, ge=1, description="served requests of the last N days")
    psi_bins: int = Field(default=10, ge=2, description="quantile bins of the reference")
    psi_alert: float = Field(default=0.25, gt=0, description="a feature above this has drifted")
    max_drifted_features: int = Field(default=0, ge=0, description="alert above this many")
    match_reference_on: str | None = Field(
        default=None, description="re-weight the reference to the window's mix of this "
        "input (e.g. day_of_week: a window of a Sunday is compared with the reference's Sundays)")
    drift_exempt: list[str] = Field(
        default_factory=list, description="inputs reported but never alerted on (calendar "
        "inputs of a window shorter than the reference's always differ)")
    prediction_psi_alert: float = Field(default=0.25, gt=0)
    skew_sample: int = Field(default=300, ge=1, description="served requests replayed offline")
    max_skew_rate: float = Field(default=0.01, ge=0, le=1,
                                 description="share of served values unequal to the offline ones")
    label_horizon_seconds: float = Field(
        default=600, gt=0, description="the next event within this is the request's answer")
    min_online_top1: float = Field(default=0.0, ge=0, le=1, description="per variant, alert below")
    min_online_top4: float = Field(default=0.0, ge=0, le=1, description="per variant, alert below")
    volume_ratio: tuple[float, float] = Field(
        default=(0.5, 2.0), description="events per day against the 28 days before: alert outside")
    max_null_rate: float = Field(default=0.05, ge=0, le=1)
    max_feature_age_hours: float = Field(
        default=48, gt=0, description="a feature table whose newest row is older: alert")


class RetrainSpec(_Strict):
    """`feastflow retrain`: the latest window, judged on the most recent days (both models)."""

    holdout_days: int = Field(default=2, ge=1)
    train_days: int = Field(default=28, ge=7)


class ModelSpec(_Strict):
    """A use case: its Feast services, label, candidates, learner, split, metrics and gate."""

    name: str
    description: str = ""
    task: Literal["ranking"] = "ranking"
    event_log: EventLogSpec
    features: FeatureSpec
    candidates: CandidateSpec
    realtime: RealtimeSpec | None = None
    model: ModelAlgoSpec
    split: SplitSpec = SplitSpec()
    metrics: list[str] = Field(default_factory=lambda: ["top1", "top4", "candidate_recall"])
    top_k: int = 4
    gate: GateSpec = GateSpec()
    monitor: MonitorSpec = MonitorSpec()
    retrain: RetrainSpec = RetrainSpec()
    source_dir: Path | None = None

    @property
    def registered_model_name(self) -> str:
        """Name of the model in the MLflow registry."""
        return self.name

    def retrain_spec(self) -> ModelSpec:
        """This spec with the retrain split: the latest `train_days`, then `holdout_days`."""
        split = self.split.model_copy(update={"holdout_days": self.retrain.holdout_days,
                                              "train_days": self.retrain.train_days})
        return self.model_copy(update={"split": split})

    @property
    def sql_dir(self) -> Path:
        """Folder of this use case's batch feature SQL files."""
        assert self.source_dir is not None
        return self.source_dir / self.features.sql_dir


class SpecError(ValueError):
    """The model spec is missing or invalid; the message names the file and the field."""


def load_spec(use_case: str, feature_repo: Path) -> ModelSpec:
    """Read and validate `feature_repo/<use_case>/model.yaml`."""
    path = feature_repo / use_case / "model.yaml"
    if not path.is_file():
        known = sorted(p.parent.name for p in feature_repo.glob("*/model.yaml"))
        raise SpecError(f"no model spec at {path}; known use cases: {', '.join(known) or 'none'}")
    raw = yaml.safe_load(path.read_text())
    try:
        return ModelSpec(**raw, source_dir=path.parent)
    except ValidationError as e:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise SpecError(f"invalid model spec {path}: {fields}") from e
