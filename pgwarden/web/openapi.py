"""The OpenAPI 3.1 description of the gateway's HTTP API, written by hand (served at ``/openapi.json``).

Kept next to ``api.py`` and checked by tests/test_approvals_api.py (every
route is described); change both together.
"""

from __future__ import annotations

import copy
from typing import Any

from .. import __version__

__all__ = ["OPENAPI", "openapi_document"]

_STATUS_VALUES = ["pending", "approved", "denied", "expired", "withdrawn", "executed"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json_content(_ref("Error"))}


_ID_PARAM = {
    "name": "id", "in": "path", "required": True,
    "description": "The request id (12 hex characters) or a unique prefix of at least 4.",
    "schema": {"type": "string", "pattern": "^[0-9a-fA-F]{4,64}$"},
}

_READ_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": _error("The reviewer holds none of the configured reviewer roles (code not_reviewer)."),
    "500": {"$ref": "#/components/responses/InternalError"},
}


def _decision(action: str) -> dict[str, Any]:
    verb = "Approve" if action == "approve" else "Deny"
    return {
        "operationId": f"{action}Approval",
        "summary": f"{verb} a pending request",
        "description": (
            "Records the caller's decision. A request needs `approvals_required` distinct approvals from "
            "holders of its `reviewer_roles` (never the requester); one denial closes it."
            if action == "approve" else
            "Denies the request: it is closed at once and the held statement (or ticket) is refused."
        ),
        "tags": ["approvals"],
        "parameters": [_ID_PARAM],
        "requestBody": {
            "required": False,
            "description": "Optional; an empty body means no comment.",
            "content": _json_content(_ref("DecisionBody")),
        },
        "responses": {
            "200": {"description": "The request after the decision.",
                    "content": _json_content(_ref("ApprovalRequestWithLinks"))},
            "400": _error("Malformed body (bad_request) or comment (bad_comment)."),
            **_READ_ERRORS,
            "403": _error("Not a reviewer of this request (not_reviewer) or the requester (self_approval)."),
            "404": _error("No such request (not_found)."),
            "409": _error("Not pending any more (not_pending), expired (expired), or the caller already decided "
                          "(already_decided)."),
            "413": _error("The body is larger than 64 KiB (too_large)."),
        },
    }


_DECISION_SCHEMA = {
    "type": "object",
    "required": ["reviewer", "roles", "action", "comment", "at", "via"],
    "properties": {
        "reviewer": {"type": "string"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "action": {"type": "string", "enum": ["approve", "deny"]},
        "comment": {"type": "string"},
        "at": {"type": ["string", "null"], "format": "date-time"},
        "via": {"type": "string", "enum": ["cli", "api"]},
    },
}

_TIME = {"type": ["string", "null"], "format": "date-time"}
_REQUEST_SCHEMA = {
    "type": "object",
    "description": "An approval request as `ApprovalRequest.as_dict()` shapes it (times in UTC, ISO 8601).",
    "required": ["id", "status", "mode", "created_at", "expires_at", "requester", "target", "statement",
                 "fingerprint", "approvals_required", "reviewer_roles", "decisions"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": _STATUS_VALUES},
        "mode": {"type": "string", "enum": ["hold", "ticket"]},
        "created_at": _TIME,
        "expires_at": _TIME,
        "valid_until": _TIME,
        "requester": {"type": "string"},
        "requester_roles": {"type": "array", "items": {"type": "string"}},
        "role": {"type": ["string", "null"]},
        "target": {"type": "string"},
        "session": {"type": "string"},
        "gateway": {"type": "string"},
        "statement": {"type": "string"},
        "params": {"type": "array", "items": {
            "type": "object",
            "properties": {"format": {"type": "integer", "enum": [0, 1]},
                           "value": {"type": ["string", "null"]}},
        }},
        "fingerprint": {"type": "string", "description": "SHA-256 of target, statement and parameters."},
        "rule": {"type": "string"},
        "reason": {"type": "string"},
        "policy": {"type": "string"},
        "approvals_required": {"type": "integer", "minimum": 1},
        "reviewer_roles": {"type": "array", "items": {"type": "string"}},
        "validity_seconds": {"type": "number"},
        "decisions": {"type": "array", "items": _ref("Decision")},
        "decided_at": _TIME,
        "closed_at": _TIME,
        "closed_by": {"type": ["string", "null"]},
        "closed_reason": {"type": "string"},
        "executed_session": {"type": ["string", "null"]},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "pgwarden HTTP API",
        "version": __version__,
        "description": (
            "Just-in-time approvals: list, inspect, approve and deny statements a guardrail rule sent for "
            "review (with approvals enabled; otherwise these routes answer 404 `approvals_off`). "
            "Authenticate with an access token of a trusted issuer or a pgwarden API key "
            "(`Authorization: Bearer pgw_...`). Operators: `/metrics` (Prometheus) and `/health` "
            "(readiness) need no authentication."
        ),
    },
    "tags": [{"name": "approvals"}, {"name": "meta"}, {"name": "operations"}],
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/health": {"get": {
            "operationId": "health", "summary": "Liveness (no authentication)", "tags": ["meta"],
            "description": "Always 200 while the gateway process serves HTTP; checks nothing else. "
                           "For readiness (audit store, upstreams) use `/health`.",
            "security": [],
            "responses": {"200": {"description": "The API is up.", "content": _json_content({
                "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})}},
        }},
        "/health": {"get": {
            "operationId": "readiness", "summary": "Readiness: audit store and upstreams (no authentication)",
            "tags": ["operations"], "security": [],
            "description": "503 while the audit writer cannot write its store or a target's PostgreSQL does "
                           "not accept TCP connections (checked concurrently with a 1 s timeout, cached 3 s; "
                           "no login). `failing` names what is wrong (`audit`, `upstream:<target>`).",
            "responses": {
                "200": {"description": "Everything is reachable.", "content": _json_content(_ref("Health"))},
                "503": {"description": "Something is not.", "content": _json_content(_ref("Health"))},
            },
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics (no authentication)",
            "tags": ["operations"], "security": [],
            "description": "The Prometheus text exposition format; docs/metrics.md lists every metric.",
            "responses": {
                "200": {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "404": _error("Metrics are off (`api.metrics: false`; code metrics_off)."),
            },
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document (no authentication)", "tags": ["meta"],
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": _json_content({"type": "object"})}},
        }},
        "/api/v1/approvals": {"get": {
            "operationId": "listApprovals", "summary": "List approval requests, newest first", "tags": ["approvals"],
            "parameters": [
                {"name": "status", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": [*_STATUS_VALUES, "all"], "default": "pending"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
            ],
            "responses": {
                "200": {"description": "The requests.", "content": _json_content({
                    "type": "object", "required": ["approvals"],
                    "properties": {"approvals": {"type": "array", "items": _ref("ApprovalRequest")}}})},
                "400": _error("Unknown status (bad_status) or limit (bad_limit)."),
                **_READ_ERRORS,
            },
        }},
        "/api/v1/approvals/{id}": {"get": {
            "operationId": "getApproval", "summary": "One request, with the links to decide it",
            "tags": ["approvals"], "parameters": [_ID_PARAM],
            "responses": {
                "200": {"description": "The request.", "content": _json_content(_ref("ApprovalRequestWithLinks"))},
                "404": _error("No such request (not_found)."),
                **_READ_ERRORS,
            },
        }},
        "/api/v1/approvals/{id}/approve": {"post": _decision("approve")},
        "/api/v1/approvals/{id}/deny": {"post": _decision("deny")},
    },
    "components": {
        "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "An access token (JWT) of a configured issuer, or a pgwarden API key (pgw_...).",
        }},
        "responses": {
            "Unauthorized": {
                "description": "No, or an unaccepted, bearer token (unauthenticated).",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                "content": _json_content(_ref("Error")),
            },
            "InternalError": _error("An unexpected failure (internal); the gateway log has the details."),
        },
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, for programs", "examples": [
                            "unauthenticated", "not_reviewer", "self_approval", "not_found", "not_pending",
                            "expired", "already_decided", "bad_request", "bad_comment", "bad_status",
                            "bad_limit", "too_large", "approvals_off", "metrics_off", "internal"]},
                        "message": {"type": "string", "description": "For people"},
                    },
                }},
            },
            "Health": {
                "type": "object", "required": ["status", "checks"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                    "failing": {"type": "array", "items": {"type": "string"}},
                    "checks": {"type": "object", "properties": {
                        "audit": {"type": "object", "required": ["ok"], "properties": {
                            "ok": {"type": "boolean"}, "enabled": {"type": "boolean"}, "store": {"type": "string"},
                            "queued": {"type": "integer"}, "error": {"type": "string"}}},
                        "upstreams": {"type": "object", "additionalProperties": {
                            "type": "object", "required": ["ok"], "properties": {
                                "ok": {"type": "boolean"}, "seconds": {"type": "number"},
                                "error": {"type": "string", "examples": ["refused", "timeout", "unreachable"]}}}},
                    }},
                },
            },
            "DecisionBody": {
                "type": "object",
                "properties": {"comment": {"type": "string", "maxLength": 2000}},
            },
            "Decision": _DECISION_SCHEMA,
            "ApprovalRequest": _REQUEST_SCHEMA,
            "Links": {
                "type": "object", "required": ["show", "approve", "deny"],
                "properties": {k: {"type": "string", "format": "uri"} for k in ("show", "approve", "deny")},
            },
            "ApprovalRequestWithLinks": {
                "allOf": [_ref("ApprovalRequest"), {
                    "type": "object", "required": ["links"], "properties": {"links": _ref("Links")}}],
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """A copy of :data:`OPENAPI` (callers may change it, e.g. add ``servers``)."""
    return copy.deepcopy(OPENAPI)
