"""Settings of the prediction server: the platform settings plus what only the server needs.

Every field is an environment variable with the FEASTFLOW_ prefix, e.g.
FEASTFLOW_CHALLENGER_SHARE=0.05 or FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS=0 (0 disables a cache).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field

from feastflow.settings import Settings


class ServingSettings(Settings):
    """Which models to serve and how: routing, caches, fallbacks, logging, limits."""

    use_cases: str | None = Field(default=None, description="comma-separated use cases to serve "
                                  "(default: every folder of the feature repo with a model.yaml)")
    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = Field(default=20, ge=1)

    # models and routing
    model_alias: str = "champion"
    challenger_alias: str = "challenger"
    challenger_share: float = Field(default=0.0, ge=0.0, le=1.0,
                                    description="share of users answered by the challenger")
    shadow_share: float = Field(default=0.0, ge=0.0, le=1.0,
                                description="share of requests the challenger also scores, logged only")
    ab_salt: str = Field(default="ab-1", description="change it to reshuffle the A/B split")
    registry_poll_seconds: float = Field(default=30.0, ge=0.0, description="0: never poll")

    # caches
    prediction_cache_ttl_seconds: float = Field(default=300.0, ge=0.0)
    prediction_cache_size: int = Field(default=200_000, ge=1)
    feature_cache_ttl_seconds: float = Field(default=5.0, ge=0.0)
    feature_cache_size: int = Field(default=500_000, ge=1)
    cache_ttl_jitter: float = Field(default=0.5, ge=0.0, lt=1.0,
                                    description="each entry lives a random (1 - j..1) x its TTL")

    # fallbacks
    latency_budget_ms: float = Field(default=50.0, gt=0.0)
    warmup_timeout_seconds: float = Field(default=30.0, gt=0.0,
                                          description="each model's first prediction at start")
    breaker_failures: int = Field(default=5, ge=1, description="consecutive failures that open it")
    breaker_reset_seconds: float = Field(default=2.0, gt=0.0, description="open for this long")
    popular_refresh_seconds: float = Field(default=300.0, gt=0.0)
    popular_refresh_timeout_seconds: float = Field(
        default=30.0, gt=0.0, description="one background read of the popular items (a whole "
        "catalogue's counts: not held to the per-request latency budget)")

    # safety
    predict_requires_key: bool = False
    max_body_bytes: int = Field(default=65_536, ge=1024, description="every body but events'")
    max_events_per_request: int = Field(default=500, ge=1)
    head_timeout_seconds: float = Field(default=10.0, gt=0.0, description="a request's line and "
                                        "headers must arrive within this (idle connections too)")
    body_timeout_seconds: float = Field(default=10.0, gt=0.0,
                                        description="a request's body must arrive within this")
    max_head_bytes: int = Field(default=16_384, ge=1024, description="request line and headers")
    max_connections: int = Field(default=1000, ge=1, description="connections and requests in "
                                 "flight; over it, a fast 503")
    keep_alive_seconds: float = Field(default=5.0, gt=0.0, description="idle keep-alive")
    max_event_bytes: int = Field(default=2048, ge=256, description="one event as compact JSON, "
                                 "at most (each contract's largest valid event fits)")

    @property
    def max_events_body_bytes(self) -> int:
        """POST /v1/events' body limit: a full batch of the largest events, commas, envelope."""
        return self.max_events_per_request * (self.max_event_bytes + 1) + 64

    # observability
    readiness_budget_seconds: float = Field(default=1.0, gt=0.0,
                                            description="/readyz answers within about this")
    log_json: bool = True
    request_log_sample: float = Field(default=0.01, ge=0.0, le=1.0,
                                      description="share of predictions logged to Parquet")
    request_log_flush_seconds: float = Field(default=5.0, gt=0.0)

    @property
    def served_log_dir(self) -> Path:
        """Sampled served features and predictions, Parquet by date/hour (read by monitoring)."""
        return self.served_dir(self.use_case)

    @property
    def precomputed_dir(self) -> Path:
        """Predictions and offline bundles written by `feastflow precompute` (default use case)."""
        return self.precomputed_dir_of(self.use_case)

    def precomputed_dir_of(self, use_case: str) -> Path:
        """A use case's predictions and offline bundles written by `feastflow precompute`."""
        return self.home / "precomputed" / use_case


@lru_cache
def get_serving_settings() -> ServingSettings:
    """Serving settings from the environment, built once per process."""
    return ServingSettings()
