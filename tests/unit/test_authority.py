"""The table of who may do what (api/authority.py) covers every route of the app, and the
API's role dependencies keep it: the app refuses to start otherwise. (What each caller
gets from each route is tested against a running serve in
tests/integration/test_authority.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from certbroker.api import authority
from certbroker.api.app import create_app
from certbroker.api.authority import Names, Rule, Who


def test_every_route_of_the_app_has_a_rule_and_keeps_it() -> None:
    app = create_app(None)  # type: ignore[arg-type]  # the table needs no broker
    assert authority.problems(app) == []
    keys = {key for key, _ in authority.route_keys(app)}
    assert {"WS /api/v1/agent/ws", "POST /api/v1/agent/poll", "GET /mail"} <= keys


def test_a_route_without_a_rule_stops_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    rules: dict[str, Rule] = dict(authority.RULES)
    del rules["DELETE /api/v1/certificates/{cert_id}"]
    monkeypatch.setattr(authority, "RULES", rules)
    with pytest.raises(RuntimeError, match=r"DELETE /api/v1/certificates/\{cert_id\}: no rule"):
        create_app(None)  # type: ignore[arg-type]


def test_a_rule_the_routes_dependency_does_not_keep_stops_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rules: dict[str, Any] = dict(authority.RULES)
    rules["GET /api/v1/users"] = Rule(Who.VIEWER)  # the route asks for admin
    rules["GET /api/v1/gone"] = Rule(Who.ADMIN)
    rules["GET /api/v1/certificates"] = Rule(Who.VIEWER, Names.REFUSED)  # it lets them in
    monkeypatch.setattr(authority, "RULES", rules)
    with pytest.raises(RuntimeError) as refused:
        create_app(None)  # type: ignore[arg-type]
    assert "GET /api/v1/users: its dependency asks for admin, the rule says viewer" in str(
        refused.value
    )
    assert "GET /api/v1/gone: a rule for a route that does not exist" in str(refused.value)
    assert (
        "GET /api/v1/certificates: the rule says a name-limited token is refused, its "
        "dependency lets it"
    ) in str(refused.value)
