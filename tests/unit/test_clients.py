"""Clients on a real store: what an allow-list lets through (wildcards only when asked
for), tokens kept hashed, rotated, refused when disabled."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.clients import ClientPolicy, off_the_list, parse_allow_list
from certbroker.domain.errors import NotAuthenticated, UsageError
from certbroker.services.clients import ClientService
from certbroker.services.common import ServiceContext
from certbroker.store.repository import Repository
from certbroker.store.schema import clients
from tests.unit.conftest import NOW


@pytest.fixture
def service(repo: Repository) -> ClientService:
    ctx = ServiceContext(
        repo=repo,
        sealer=Sealer(new_master_key()),
        ca_factory=None,  # type: ignore[arg-type]
        clock=lambda: NOW,
    )
    return ClientService(ctx)


def test_an_allow_list_lets_through_its_names_and_wildcards_only_when_asked() -> None:
    allow = ["gw1.example.com", "*.branch.example.com"]
    assert off_the_list(allow, False, ["gw1.example.com", "a.branch.example.com"]) == []
    assert off_the_list(allow, False, ["x.b.branch.example.com"]) == []
    assert off_the_list(allow, False, ["branch.example.com", "gw2.example.com"]) == [
        "branch.example.com",
        "gw2.example.com",
    ]
    # A wildcard certificate needs --wildcard, and a '*.zone' pattern that covers it.
    assert off_the_list(allow, False, ["*.branch.example.com"]) == ["*.branch.example.com"]
    assert off_the_list(allow, True, ["*.branch.example.com", "*.x.branch.example.com"]) == []
    assert off_the_list(["gw1.example.com"], True, ["*.gw1.example.com"]) == ["*.gw1.example.com"]
    with pytest.raises(UsageError, match="--wildcard needs"):
        parse_allow_list(["gw1.example.com"], True)


def test_a_token_is_shown_once_kept_hashed_and_rotated(
    service: ClientService, repo: Repository
) -> None:
    client, token = service.add("gw1", ["gw1.example.com"], policy=ClientPolicy.APPROVE)
    assert token.startswith("cbc_") and client.token_prefix == token[:10]
    with repo.engine.connect() as conn:
        stored = conn.execute(select(clients.c.token_hash)).scalar_one()
    assert token not in stored and len(stored) == 64
    assert service.authenticate(token, "192.0.2.9").name == "gw1"
    assert service.get("gw1").last_seen_from == "192.0.2.9"
    _, newer = service.rotate_token("gw1")
    with pytest.raises(NotAuthenticated, match="unknown client token"):
        service.authenticate(token, "192.0.2.9")
    assert service.authenticate(newer, "192.0.2.9").policy is ClientPolicy.APPROVE
    service.set_enabled("gw1", False)
    with pytest.raises(NotAuthenticated, match="disabled"):
        service.authenticate(newer, "192.0.2.9")


def test_the_allow_list_changes_and_bad_input_is_named(service: ClientService) -> None:
    service.add("lb", ["a.example.com"])
    changed = service.allow("lb", ["*.example.net"], ["a.example.com"], wildcard=True)
    assert changed.allow == ("*.example.net",) and changed.wildcard
    with pytest.raises(UsageError, match=r"does not allow b\.example\.com"):
        service.allow("lb", remove=["b.example.com"])
    with pytest.raises(UsageError, match="already exists"):
        service.add("lb", [])
    for bad_name in ("", "-x", "a b", "x" * 101):
        with pytest.raises(UsageError, match="client name"):
            service.add(bad_name, [])
    with pytest.raises(UsageError, match="name pattern"):
        service.add("c", ["not a name"])
    assert [c.name for c in service.all()] == ["lb"]
    service.delete("lb")
    assert service.all() == []
