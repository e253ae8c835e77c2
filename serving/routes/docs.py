"""GET /openapi.json (the API, with each use case's request schema generated from its contract)
and GET /docs (the same document as a plain HTML page: no script, nothing fetched from the
internet)."""

from __future__ import annotations

import html
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response

from serving.routes.common import ServerState, UseCaseState, state

_ERROR = {"$ref": "#/components/schemas/Error"}
_COMMON = {
    "model_version": {"type": ["string", "null"], "description": "registry version that answered"},
    "variant": {"type": "string", "description": "champion or challenger (sticky per entity)"},
    "fallback": {"type": ["string", "null"], "description": "the fallback level that answered; "
                 "null when the model did"},
    "cached": {"type": "boolean", "description": "answered from the prediction cache"},
    "latency_ms": {"type": "number"},
}


def build_openapi(app: ServerState) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server's routes and use cases."""
    served = {n: uc for n, uc in app.use_cases.items() if uc.spec is not None}
    types = [uc.request_type for uc in served.values()]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}")
    components["Error"] = {"type": "object", "properties": {"detail": {
        "description": "a reason, or a list of {loc, msg, type} naming each bad field"}}}
    paths: dict[str, Any] = {}
    for name, uc in served.items():
        response_name = f"{uc.request_type.__name__.removesuffix('PredictRequest')}Prediction"
        components[response_name] = _response_schema(uc)
        operation = _predict(uc, response_name)
        if name == app.default:
            paths["/v1/predict"] = {"post": {**operation, "operationId": "predict_default",
                                             "summary": f"{operation['summary']} (default use "
                                             "case)"}}
        paths[f"/v1/{name}/predict"] = {"post": operation}
        if uc.spec is not None and uc.spec.realtime is not None:
            events = _events(name)
            if name == app.default:
                paths["/v1/events"] = {"post": {**events, "operationId": "events_default"}}
            paths[f"/v1/{name}/events"] = {"post": events}
    default = app.get(None)
    if default is not None and default.task == "ranking":
        paths["/v1/users/{user_id}/bundle"] = {"get": _bundle(default)}
    paths.update(_operational())
    return {
        "openapi": "3.1.0",
        "info": {"title": "feastflow prediction server", "version": "1",
                 "description": "One server for every use case of the feature repo: "
                 + ", ".join(f"`{n}` ({uc.task})" for n, uc in served.items())
                 + f". Routes without a use case serve `{app.default}`."},
        "paths": paths,
        "components": {"schemas": components},
    }


def _predict(uc: UseCaseState, response_name: str) -> dict[str, Any]:
    spec = uc.spec
    assert spec is not None
    what = {"ranking": "rank items", "binary_classification": "score and decide",
            "regression": "predict"}[spec.task]
    return {
        "operationId": f"predict_{uc.name}",
        "summary": f"{uc.name}: {what}",
        "description": spec.description,
        "tags": [uc.name],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{uc.request_type.__name__}"},
            "example": _example(uc)}}},
        "responses": {
            "200": {"description": "the answer (never a 5xx for a valid request: fallbacks)",
                    "content": {"application/json": {
                        "schema": {"$ref": f"#/components/schemas/{response_name}"}}}},
            "401": {"description": "API key required (FEASTFLOW_PREDICT_REQUIRES_KEY)"},
            "404": {"description": "unknown use case", "content": {
                "application/json": {"schema": _ERROR}}},
            "413": {"description": "body too large"},
            "422": {"description": "invalid request: `loc` names the field", "content": {
                "application/json": {"schema": _ERROR}}},
            "503": {"description": "the use case is not set up (see /readyz)"},
        },
    }


def _example(uc: UseCaseState) -> dict[str, Any]:
    spec = uc.spec
    assert spec is not None
    log = spec.event_log
    entity = log.columns[log.entity]
    value: Any = {"int": 1, "float": 1.0}.get(entity.type, "alice")
    example: dict[str, Any] = {log.entity: value, "timestamp": "2026-03-02T08:05:00Z",
                               "context": dict(log.example_context)}
    if uc.task == "ranking":
        example["k"] = 4
    return example


def _response_schema(uc: UseCaseState) -> dict[str, Any]:
    if uc.task == "ranking":
        item = {"type": "object", "properties": {uc.item_key: {"type": "string"},
                                                 "score": {"type": "number"}}}
        own = {uc.items_key: {"type": "array", "items": item, "description": "best first"},
               "known_user": {"type": ["boolean", "null"], "description":
                              "the entity has own candidates; null when a fallback answered "
                              "that cannot tell"}}
    else:
        known = {"known": {"type": ["boolean", "null"],
                           "description": "stored features of the entity were found; null "
                           "when a fallback answered that cannot tell"}}
        if uc.task == "binary_classification":
            own = {"score": {"type": ["number", "null"],
                             "description": "probability of the positive class"},
                   "decision": {"type": ["string", "null"]}, **known}
        else:
            own = {"prediction": {"type": ["number", "null"]}, **known}
    return {"type": "object", "properties": {**own, **_COMMON}}


def _events(name: str) -> dict[str, Any]:
    return {
        "operationId": f"events_{name}", "summary": f"{name}: append raw events (API key)",
        "tags": [name],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["events"], "properties": {"events": {
                "type": "array", "items": {"type": "object"},
                "description": "raw events, each checked against the use case's contract"}}}}}},
        "responses": {"202": {"description": "accepted, duplicates, rejected (field, reason)"},
                      "401": {"description": "missing or wrong x-api-key"},
                      "422": {"description": "no valid event"},
                      "503": {"description": "the event stream is unavailable"}},
    }


def _bundle(uc: UseCaseState) -> dict[str, Any]:
    return {
        "operationId": "bundle",
        "summary": f"{uc.name}: 24 hours of top items for a user (API key)",
        "tags": [uc.name],
        "parameters": [
            {"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "k", "in": "query", "schema": {"type": "integer", "default": 4}},
            {"name": "start", "in": "query", "schema": {"type": "string", "format": "date-time"}}],
        "responses": {"200": {"description": "one list per hour"},
                      "401": {"description": "missing or wrong x-api-key"},
                      "403": {"description": "the server has no API key set"},
                      "422": {"description": "bad parameter", "content": {
                          "application/json": {"schema": _ERROR}}}},
    }


def _operational() -> dict[str, Any]:
    def get(summary: str, **responses: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "tags": ["operations"], "responses": {
            code.lstrip("_"): {"description": text} for code, text in responses.items()}}}

    def post(summary: str) -> dict[str, Any]:
        return {"post": {"summary": summary, "tags": ["admin"], "responses": {
            "200": {"description": "done"}, "401": {"description": "missing or wrong x-api-key"},
            "403": {"description": "the server has no API key"}}}}

    return {
        "/healthz": get("alive", _200="ok"),
        "/readyz": get("ready, degraded (reasons) or not ready; per use case",
                       _200="ready or degraded", _503="not ready"),
        "/metrics": get("Prometheus metrics (label use_case)", _200="exposition text"),
        "/admin/reload": post("ask the registry now, every use case; swap what moved"),
        "/admin/cache/flush": post("empty every use case's L1 and L2 caches"),
        "/openapi.json": get("this document", _200="OpenAPI 3.1"),
        "/docs": get("this document as HTML", _200="HTML"),
    }


def render_docs(app: ServerState) -> dict[str, bytes]:
    """The OpenAPI document and its HTML page, rendered once at start-up."""
    document = build_openapi(app)
    return {"/openapi.json": orjson.dumps(document), "/docs": _html(document).encode()}


def _html(document: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>feastflow API</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             "pre{background:#f4f4f4;padding:.6em;overflow:auto}"
             "h2{border-top:1px solid #ccc;padding-top:.6em}code{background:#f4f4f4}</style>",
             "</head><body>", f"<h1>{e(document['info']['title'])}</h1>",
             f"<p>{e(document['info']['description'])}</p>",
             "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a></p>"]
    schemas = document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            parts.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            parts.append(f"<p>{e(operation.get('summary', ''))}</p>")
            if operation.get("description"):
                parts.append(f"<p>{e(operation['description'])}</p>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                ref = body["schema"].get("$ref", "")
                name = ref.rsplit("/", 1)[-1]
                shown = _inline(schemas[name], schemas) if name in schemas else body["schema"]
                parts.append("<h3>Request</h3><pre>"
                             + e(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
                             + "</pre>")
                if "example" in body:
                    parts.append("<h3>Example</h3><pre>" + e(orjson.dumps(
                        body["example"], option=orjson.OPT_INDENT_2).decode()) + "</pre>")
            codes = ", ".join(f"{code} {r.get('description', '')}"
                              for code, r in operation.get("responses", {}).items())
            parts.append(f"<p><b>Responses:</b> {e(codes)}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _inline(schema: Any, schemas: dict[str, Any], depth: int = 0) -> Any:
    # The request schema with its references resolved, for reading.
    if depth > 5:
        return schema
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in schemas:
            return _inline(schemas[ref.rsplit("/", 1)[-1]], schemas, depth + 1)
        return {k: _inline(v, schemas, depth) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_inline(v, schemas, depth) for v in schema]
    return schema


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 document."""
    return Response(state(request).docs["/openapi.json"], media_type="application/json")


async def docs_page(request: Request) -> Response:
    """The API as a plain HTML page."""
    return Response(state(request).docs["/docs"], media_type="text/html; charset=utf-8")
