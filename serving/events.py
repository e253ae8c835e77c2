"""Event intake behind POST /v1/events: validate each event with ingest's rules, hash the user
ids, append the valid ones to the event stream; invalid ones come back with the field and reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from feastflow.event_log import hash_columns
from feastflow.events import encode_events, event_columns, unknown_field_reason, validate_events
from feastflow.spec import EventLogSpec
from feastflow.stream import EventStream


@dataclass
class IntakeResult:
    """What happened to one batch: how many were appended, already known, and why others failed."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"loc", "msg", "type"}

    def body(self) -> dict[str, Any]:
        """The 202 response body."""
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


class EventIntake:
    """Validates and hashes events and appends them to the stream (blocking: run in a thread)."""

    def __init__(self, stream: EventStream, secret: str, contract: EventLogSpec) -> None:
        self.stream = stream
        self.secret = secret
        self.contract = contract

    def submit(self, items: list[Any], now: pd.Timestamp | None = None) -> IntakeResult:
        """Append the valid events of `items`; each invalid one is reported by its index."""
        result = IntakeResult()
        rows, positions = [], []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                result.rejected.append(_error(index, None, "must be a JSON object"))
                continue
            unknown = sorted(k for k in item if k not in self.contract.columns)
            if unknown:
                reason = unknown_field_reason(self.contract)
                result.rejected.extend(_error(index, k, reason) for k in unknown)
                continue
            rows.append(item)
            positions.append(index)
        if rows:
            contract = self.contract
            frame = pd.DataFrame(rows, columns=event_columns(contract))
            clean, errors = validate_events(frame, contract, now=now)
            result.rejected.extend(_error(positions[e.row - 1], e.field, e.reason) for e in errors)
            if len(clean):
                hashed = hash_columns(clean, self.secret, contract.hashed_columns)
                flags = self.stream.append(encode_events(hashed, contract))
                result.accepted = sum(flags)
                result.duplicates = len(flags) - result.accepted
        result.rejected.sort(key=lambda e: e["loc"][2])
        return result


def _error(index: int, field_name: str | None, reason: str) -> dict[str, Any]:
    loc: list[str | int] = ["body", "events", index]
    if field_name is not None:
        loc.append(field_name)
    return {"loc": loc, "msg": reason, "type": "value_error"}
