"""The prediction API contract."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class UnlockContext(BaseModel):
    """What the phone knows at the unlock."""

    model_config = ConfigDict(extra="forbid")

    location: Literal["home", "work", "commute", "other"]
    battery: int = Field(ge=0, le=100, description="battery level in percent")
    charging: bool
    network: Literal["wifi", "cellular", "offline"]
    secs_since_prev_unlock: float | None = Field(default=None, ge=0)


class PredictRequest(BaseModel):
    """A user unlocked the phone at `timestamp` in `context`: which apps to suggest?"""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, description="raw user id; hashed here")
    timestamp: datetime = Field(description="the unlock, ISO 8601; naive means UTC")
    context: UnlockContext
    k: int = Field(default=4, ge=1, le=20, description="how many apps to return")

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ScoredApp(BaseModel):
    """One suggested app and its score (higher is likelier)."""

    app: str
    score: float


class PredictResponse(BaseModel):
    """The suggestions, best first, and which model answered how fast."""

    apps: list[ScoredApp]
    model_version: str
    known_user: bool
    fallback: str | None = Field(
        default=None, description="set when the model did not rank: e.g. popular_at_hour"
    )
    latency_ms: float
