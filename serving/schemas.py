"""The prediction API contract, generated from each use case's data contract and validated with
msgspec (about 10x cheaper than pydantic here).

The rules are the event contract's (see `feastflow.events`): strict types (msgspec never turns a
string or a bool into a number), a time zone on the timestamp, the contract's `earliest` as its
lower bound, each string column's `max_length`. A prediction may be asked for a future moment
(the bundle's next hours), so `max_future` does not apply; years past 9998 are refused.

Invalid input becomes a 422 whose `detail` names the field (`loc`) and the reason (`msg`), in
FastAPI's shape, so clients see one error format on every endpoint.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Optional

import msgspec
from msgspec import Meta, Struct

from feastflow.errors import RequestError
from feastflow.spec import ColumnSpec, ModelSpec

_BASE_TYPES: Final[dict[str, type]] = {"string": str, "int": int, "float": float, "bool": bool,
                                       "timestamp": datetime}
_REQUESTS: dict[tuple[str, int, str], type[Struct]] = {}
_EARLIEST: dict[type, datetime] = {}  # request type -> the earliest timestamp it accepts


def request_type(spec: ModelSpec, max_k: int = 20) -> type[Struct]:
    """The predict request of a use case, generated from its data contract (cached per use case).

    `{<entity>: ..., "timestamp": ISO 8601 with a zone, "context": {<each context column, typed
    from the contract>}, "k": 1..max_k (ranking only)}`; unknown fields are refused at every
    level.
    """
    log = spec.event_log
    key = (spec.name, max_k, log.model_dump_json())
    kind = _REQUESTS.get(key)
    if kind is not None:
        return kind
    camel = "".join(part.capitalize() for part in spec.name.split("_"))
    context_fields = [_field(name, log.columns[name]) for name in log.context]
    context = msgspec.defstruct(
        f"{camel}Context", context_fields, kw_only=True, forbid_unknown_fields=True,
        module=__name__)
    context.__doc__ = f"What is known at the request ({spec.name})."
    fields: list[Any] = [
        (log.entity, _column_type(log.columns[log.entity], entity=True)),
        ("timestamp", Annotated[datetime, Meta(
            tz=True, description=f"ISO 8601 with a time zone, from {log.earliest:%Y-%m-%d} "
                                 "(the contract's earliest)")]),
        ("context", context) if log.context else ("context", context, msgspec.field(default_factory=context)),
    ]
    if not spec.per_event:
        fields.append(("k", Annotated[int, Meta(ge=1, le=max_k, description="how many items")], 4))
    kind = msgspec.defstruct(f"{camel}PredictRequest", fields, kw_only=True,
                             forbid_unknown_fields=True, module=__name__)
    kind.__doc__ = spec.description or f"A {spec.name} prediction request."
    _REQUESTS[key] = kind
    _EARLIEST[kind] = log.earliest
    return kind


def _field(name: str, column: ColumnSpec) -> tuple[Any, ...]:
    kind = _column_type(column)
    return (name, kind, None) if column.nullable else (name, kind)


def _column_type(column: ColumnSpec, entity: bool = False) -> Any:
    """A contract column as a msgspec type: allowed -> Literal, min/max -> ge/le, nullable ->
    optional, pattern -> pattern, max_length -> max_length; an entity string is never empty."""
    meta: dict[str, Any] = {}
    if column.description:
        meta["description"] = column.description
    kind: Any = _BASE_TYPES[column.type]
    if column.allowed is not None and column.type in ("string", "int"):
        kind = Literal[tuple(column.allowed)]
    else:
        if column.type in ("int", "float"):
            integral = column.type == "int"
            if column.min is not None:
                meta["ge"] = math.ceil(column.min) if integral else column.min
            if column.max is not None:
                meta["le"] = math.floor(column.max) if integral else column.max
        if column.type == "string":
            if column.pattern is not None:
                meta["pattern"] = column.pattern
            meta["max_length"] = column.length_limit
            if entity:
                meta["min_length"] = 1
    if meta:
        kind = Annotated[kind, Meta(**meta)]
    if column.nullable and not entity:
        kind = Optional[kind]  # noqa: UP045 (a runtime type object, not an annotation)
    return kind


def to_unix_us(timestamp: datetime) -> int:
    """The timestamp in Unix microseconds (naive, from a caller other than `decode`, means UTC);
    RequestError outside 1970-9998."""
    ts = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)
    seconds = int(ts.timestamp())
    if not 0 <= seconds < _YEAR_9999:  # derived times (the next hours) must stay representable
        raise RequestError([{"loc": ["body", "timestamp"], "type": "value_error",
                             "msg": "timestamp must be between 1970 and 9998 (UTC)"}])
    return seconds * 1_000_000 + ts.microsecond


_YEAR_9999 = 253370764800  # 9999-01-01T00:00:00Z
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$")
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def decode(body: bytes, kind: type[Struct]) -> Any:
    """Parse and validate a JSON body; RequestError names the field and the reason."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        request = decoder.decode(body)
    except msgspec.ValidationError as e:
        raise RequestError([_error(str(e))]) from e
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as e:
        raise RequestError([{"loc": ["body"], "msg": f"not valid JSON: {e}",
                             "type": "json_invalid"}]) from e
    earliest = _EARLIEST.get(kind)
    if earliest is not None and request.timestamp < earliest:
        raise RequestError([{"loc": ["body", "timestamp"], "type": "value_error",
                             "msg": f"before {earliest:%Y-%m-%dT%H:%M:%SZ}, the earliest time "
                                    "this use case accepts"}])
    return request


def _error(text: str) -> dict[str, Any]:
    match = _AT.match(text)
    msg, path = (match["msg"], match["path"]) if match else (text, "")
    loc: list[str | int] = ["body"]
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        loc.append(part[0] if part[0] else int(part[1]))
    unknown = re.match(r"Object contains unknown field `([^`]+)`", msg)
    if unknown:
        loc.append(unknown[1])
    missing = re.match(r"Object missing required field `([^`]+)`", msg)
    if missing:
        loc.append(missing[1])
    return {"loc": loc, "msg": msg, "type": "value_error"}
