"""The OpenAPI 3.1 description of the alerting HTTP API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any


def _q(name: str, desc: str, schema: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": desc, "schema": {"type": schema}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"type": "string", "description": "RFC 3339 with offset, or epoch seconds"}
_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ALERT_RESP = {"description": "the alert after the action", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"alert": {"$ref": "#/components/schemas/Alert"}}}}}}


def _op(summary: str, *, params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        ok: dict[str, Any] | None = None, role: str = "operator") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": f"Minimum role: {role}.",
                          "parameters": params or [],
                          "responses": {"200": ok or {"description": "OK"}, "400": _ERR, "401": _ERR, "403": _ERR,
                                        "404": _ERR, "409": _ERR}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


_FILTERS = [_q(c, f"filter by {c}") for c in ("kind", "site", "unit", "industry", "severity", "device_id")]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Vigil alerting API", "version": "1",
             "description": "Alerts (list, timeline, acknowledge, assign, comment, resolve, severity), silences, "
                            "duty rosters and on-call, handling figures, the notification log. "
                            "Authenticate with `Authorization: Bearer <token>`."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _obj(error={"type": "string"}, message={"type": "string"}),
            "Alert": {"type": "object", "description": "The public Alert message (broker/contracts.py) plus "
                      "unit, industry, assigned_unit, acknowledged_at, resolved_by, ack_overdue, resolve_overdue, "
                      "reopen_count, escalation {policy,next_step,repeats}, muted {kind,id}|null",
                      "properties": {k: {"type": "string"} for k in (
                          "id", "fingerprint", "rule", "severity", "status", "kind", "device_id", "site", "summary",
                          "starts_at", "updated_at", "ends_at", "acknowledged_by", "assignee", "ack_by",
                          "resolve_by", "unit", "industry")}},
            "Silence": _obj(id={"type": "string"}, matchers={"type": "array", "items": {"type": "string"}},
                            starts_at=_TIME, ends_at=_TIME, author={"type": "string"}, comment={"type": "string"}),
            "Notification": _obj(id={"type": "integer"}, kind={"type": "string"}, recipient={"type": "string"},
                                 alert_ids={"type": "array", "items": {"type": "string"}},
                                 status={"type": "string", "enum": ["pending", "sending", "sent", "dead",
                                                                     "digested"]},
                                 created_at={"type": "number"}, handed_at={"type": "number"},
                                 done_at={"type": "number"}, source_ts={"type": "number"},
                                 attempts={"type": "integer"}, channel={"type": "string"},
                                 error={"type": "string"}),
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/health": {"get": {**_op("Liveness (no authentication)"), "security": []}},
        "/api/openapi.json": {"get": {**_op("This document (no authentication)"), "security": []}},
        "/api/me": {"get": _op("The authenticated user")},
        "/api/alerts": {"get": _op("List and filter alerts, newest first", params=[
            _q("status", "comma-separated: firing,acknowledged,resolved"), _q("since", "started at or after"),
            _q("until", "started before"), _q("limit", "max rows (200)", "integer"), _q("offset", "skip", "integer"),
            *_FILTERS])},
        "/api/alerts/{id}": {"get": _op("One alert with its timeline (audit trail) and notifications",
                                        params=[_ID])},
        "/api/alerts/{id}/ack": {"post": _op("Acknowledge (stops escalation)", params=[_ID],
                                             body=_obj(note={"type": "string"}), ok=_ALERT_RESP)},
        "/api/alerts/{id}/assign": {"post": _op("Assign to a person and/or a unit", params=[_ID],
                                                body=_obj(assignee={"type": "string"}, unit={"type": "string"},
                                                          note={"type": "string"}), ok=_ALERT_RESP)},
        "/api/alerts/{id}/comment": {"post": _op("Add a comment", params=[_ID], body=_obj(text={"type": "string"}),
                                                 ok=_ALERT_RESP)},
        "/api/alerts/{id}/resolve": {"post": _op("Close with a reason", params=[_ID],
                                                 body=_obj(reason={"type": "string"}), ok=_ALERT_RESP)},
        "/api/alerts/{id}/severity": {"post": _op("Change severity (deadlines follow)", params=[_ID],
                                                  body=_obj(severity={"type": "string"}, reason={"type": "string"}),
                                                  ok=_ALERT_RESP)},
        "/api/silences": {
            "get": _op("Silences in force or scheduled"),
            "post": _op("Create a silence; operators only for their own unit (matcher unit=<unit>)",
                        body=_obj(matchers={"type": "array", "items": {"type": "string"}}, starts_at=_TIME,
                                  ends_at=_TIME, comment={"type": "string"})),
        },
        "/api/silences/{id}": {
            "put": _op("Replace a silence (operators: only their own)", params=[_ID],
                       body={"$ref": "#/components/schemas/Silence"}),
            "delete": _op("Expire a silence (operators: only their own)", params=[_ID]),
        },
        "/api/oncall": {"get": _op("Who is on duty now (or at `at`) for a unit and role",
                                   params=[_q("unit", "unit"), _q("role", "role"), _q("at", "time")])},
        "/api/rosters": {"get": _op("People (channels masked), rosters and overrides")},
        "/api/rosters/overrides": {"post": _op("Someone covers a roster for a period", role="supervisor", body=_obj(
            roster={"type": "string"}, person={"type": "string"}, starts_at=_TIME, ends_at=_TIME,
            reason={"type": "string"}))},
        "/api/rosters/overrides/{id}": {"delete": _op("Remove an override", params=[_ID], role="supervisor")},
        "/api/figures": {"get": _op("Handling figures: counts by industry/site/unit/severity/kind, MTTA, MTTR, "
                                    "closure rate, on-time rate", params=[_q("since", "period start"),
                                                                          _q("until", "period end"), *_FILTERS])},
        "/api/notifications": {"get": _op("Notification log, newest first; status=dead is the dead-letter list",
                                          params=[_q("status", "pending|sending|sent|dead|digested"),
                                                  _q("alert_id", "alert"), _q("limit", "max rows", "integer")])},
        "/api/notifications/{id}": {"get": _op("One notification with every delivery attempt", params=[_ID])},
        "/api/stats": {"get": _op("Service counters and hand-off latency percentiles")},
    },
}
