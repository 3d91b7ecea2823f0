"""The OpenAPI 3.1 description of the alerting HTTP API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any


def _q(name: str, desc: str, schema: str = "string", **bounds: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": desc,
            "schema": {"type": schema, **bounds}}


_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"}}
_TIME = {"type": "string", "description": "RFC 3339 with offset, or epoch seconds"}
_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ALERT_RESP = {"description": "the alert after the action", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"alert": {"$ref": "#/components/schemas/Alert"}}}}}}


def _op(summary: str, *, params: list[dict[str, Any]] | None = None, body: dict[str, Any] | None = None,
        ok: dict[str, Any] | None = None, role: str = "operator") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "description": f"Minimum role: {role}.",
                          "parameters": params or [],
                          "responses": {"200": ok or {"description": "OK"}, "400": _ERR, "401": _ERR, "403": _ERR,
                                        "404": _ERR, "409": _ERR, "413": {"description": "body too large"},
                                        "429": _ERR}}
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
                            "duty rosters and on-call, handling figures, the notification log, grids and work orders. "
                            "Authenticate with `Authorization: Bearer <token>`; too many failed tokens from one "
                            "address (or from everyone) answer 429 for a while. Bodies, when sent, must be JSON "
                            "objects (DELETE takes none); every query parameter is validated (400 naming it)."},
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
            _q("until", "started before"), _q("limit", "max rows (200)", "integer", minimum=1, maximum=5000),
            _q("offset", "skip", "integer", minimum=0, maximum=1_000_000),
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
        "/api/alerts/{id}/driver-text": {"post": _op(
            "Vehicle alerts: send a text to the driver (JT/T 808 0x8300 through the gateway; the terminal's reply "
            "is audited as a jt808.command event with the returned command_id)", params=[_ID],
            body=_obj(text={"type": "string", "maxLength": 200}, emergency={"type": "boolean"}), ok=_ALERT_RESP)},
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
                                                  _q("alert_id", "alert"),
                                                  _q("limit", "max rows (200)", "integer", minimum=1, maximum=5000)])},
        "/api/notifications/{id}": {"get": _op("One notification with every delivery attempt", params=[_ID])},
        "/api/stats": {"get": _op("Service counters and hand-off latency percentiles")},
        "/api/grids": {"get": _op("Grids (网格) with outline, staff and open cases; grid staff see their own",
                                  role="operator (or grid_staff)")},
        "/api/workorders": {
            "get": _op("Work orders, newest first; grid staff see only their grids' orders", params=[
                _q("stage", "comma-separated: new,dispatched,accepted,en_route,on_site,handled,verified,closed,"
                            "returned"), _q("grid", "grid id"), _q("mine", "1: orders I accepted"),
                _q("since", "opened at or after"), _q("until", "opened before"),
                _q("limit", "max rows (200)", "integer", minimum=1, maximum=5000),
                _q("offset", "skip", "integer", minimum=0, maximum=1_000_000)], role="operator (or grid_staff)"),
            "post": _op("Report an incident from the field: opens a case (source grid_staff) in the grid of the "
                        "position", body=_obj(category={"type": "string"}, summary={"type": "string"},
                                              lat={"type": "number"}, lon={"type": "number"},
                                              place={"type": "string"}, severity={"type": "string"}),
                        role="supervisor (or grid_staff)"),
        },
        "/api/workorders/figures": {"get": _op(
            "Work-order figures: response, arrival and closure times, on-time rate per milestone, closure rate, "
            "satisfaction; by grid, unit, category and person", params=[
                _q("since", "opened at or after"), _q("until", "opened before"), _q("grid", "grid"),
                _q("unit", "unit"), _q("category", "category")], role="operator (or grid_staff: own grids)")},
        "/api/workorders/{id}": {"get": _op("One work order with the case's timeline (another grid's: 404 for "
                                            "grid staff)", params=[_ID], role="operator (or grid_staff)")},
        "/api/workorders/{id}/{action}": {"post": _op(
            "A work-order step. Grid staff: accept, depart, arrive {lat, lon, accuracy_m}, handle {notes}, "
            "return {reason}, comment {text}. Centre (operator+): dispatch {grid}, reassign {grid, reason}, "
            "verify {passed, note}, close {note}, satisfaction {result, note}, comment. An illegal step for the "
            "order's stage is 409; a step of the other side is 403",
            params=[_ID, {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "enum": [
                "accept", "depart", "arrive", "handle", "return", "dispatch", "reassign", "verify", "close",
                "satisfaction", "comment"]}}],
            body=_obj(note={"type": "string"}, notes={"type": "string"}, reason={"type": "string"},
                      grid={"type": "string"}, lat={"type": "number"}, lon={"type": "number"},
                      passed={"type": "boolean"}, result={"type": "string"}, text={"type": "string"}),
            role="operator (or grid_staff)")},
    },
}
