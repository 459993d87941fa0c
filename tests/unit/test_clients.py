"""Clients on a real store: what an allow-list lets through (wildcards only when asked
for), tokens kept hashed, rotated, refused when disabled; how much one client's token
may make the broker obtain (issue 24, finding 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.clients import ClientPolicy, RequestState, off_the_list, parse_allow_list
from certbroker.domain.errors import Conflict, NotAuthenticated, Throttled, UsageError
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.services.clients import ClientService
from certbroker.services.common import ServiceContext
from certbroker.store.repository import Repository
from certbroker.store.schema import clients
from tests.unit.conftest import LEASE, NOW, issued
from tests.unit.test_agent_store import broker_at, every_order


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


def csr(names: list[str], key: Any = None) -> str:
    """A device's CSR for `names` (a key of its own unless given)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def test_a_csr_beyond_the_certificate_cap_is_refused_and_nothing_is_stored(
    repo: Repository, tmp_path: Path
) -> None:
    """A device's or an agent's CSR for a certificate the client may not hold any more is
    refused (409, naming the cap and its setting): no request, no certificate, no order."""
    from certbroker.api.agent import answer
    from certbroker.api.problems import status_of

    broker = broker_at(repo, tmp_path, NOW, client_zone_certificates=1)
    client, _ = broker.clients.add("dev", ["*.dev.example.com"])
    key = ec.generate_private_key(ec.SECP256R1())
    first = broker.devices.request_from_csr(client, csr(["a.dev.example.com"], key))
    assert first.certificate_id is not None
    requests = repo.client_device_requests(client.id, 100)

    with pytest.raises(Conflict) as refused:
        broker.devices.request_from_csr(client, csr(["b.dev.example.com"]))
    said = str(refused.value)
    assert status_of(refused.value)[0] == 409
    assert "may hold 1 certificate" in said and "CERTBROKER_CLIENT_ZONE_CERTIFICATES" in said
    assert "nothing was ordered" in said
    assert [c.id for c in repo.client_certificates(client.id)] == [first.certificate_id]
    assert repo.client_device_requests(client.id, 100) == requests
    assert len(every_order(repo)) == 1

    # The same CSR again (a device that restarted): its certificate, not counted twice.
    again = broker.devices.request_from_csr(client, csr(["a.dev.example.com"], key))
    assert again.certificate_id == first.certificate_id
    # An agent's CSR (answered at the edge: a certificate of its own) is refused alike.
    reply = answer(broker, client, {"type": "csr", "csr": csr(["a.dev.example.com"])})
    assert reply is not None and reply["status"] == 409
    assert "may hold 1 certificate" in reply["detail"]
    assert len(repo.client_certificates(client.id)) == 1 and len(every_order(repo)) == 1


def test_csrs_being_obtained_are_capped_per_client(repo: Repository, tmp_path: Path) -> None:
    """client_pending_requests: a CSR that would start an order (a new certificate, or a
    renewal with a fresh key) while that many of the client's are under way is refused
    (429) until some are done; nothing is stored for it."""
    from certbroker.api.problems import status_of

    broker = broker_at(repo, tmp_path, NOW, client_pending_requests=2)
    client, _ = broker.clients.add("dev", ["*.dev.example.com"])
    first = broker.devices.request_from_csr(client, csr(["a.dev.example.com"]))
    broker.devices.request_from_csr(client, csr(["b.dev.example.com"]))
    requests = repo.client_device_requests(client.id, 100)

    with pytest.raises(Throttled) as refused:
        broker.devices.request_from_csr(client, csr(["c.dev.example.com"]))
    said = str(refused.value)
    assert status_of(refused.value)[0] == 429 and refused.value.retry_after > 0
    assert "2 certificates being obtained" in said
    assert "client_pending_requests" in said and "CERTBROKER_CLIENT_PENDING_REQUESTS" in said
    assert "once some of them are issued" in said
    assert len(repo.client_certificates(client.id)) == 2 and len(every_order(repo)) == 2
    assert repo.client_device_requests(client.id, 100) == requests

    # The first is issued: room for one more.
    assert first.certificate_id is not None
    order = repo.active_order_of(first.certificate_id)
    assert order is not None and repo.try_claim(order.id, "w", NOW, NOW + LEASE, None)
    due = RenewalPlan(NOW, RenewalReason.LIFETIME)  # due at once: a fresh CSR renews it
    repo.store_issued(first.certificate_id, order.id, "w", issued("01"), NOW, due)
    third = broker.devices.request_from_csr(client, csr(["c.dev.example.com"]))
    assert third.state is RequestState.ACCEPTED
    # Two under way again: renewing the first with a fresh key would be a third order.
    with pytest.raises(Throttled, match="2 certificates being obtained"):
        broker.devices.request_from_csr(client, csr(["a.dev.example.com"]))
    assert repo.active_order_of(first.certificate_id) is None


def test_requests_awaiting_approval_are_capped_per_client(repo: Repository, tmp_path: Path) -> None:
    """client_approval_requests: a CSR for names off the list (policy approve) while that
    many of the client's wait for an admin is refused (429), saying to have them decided;
    names on the list still go through."""
    broker = broker_at(repo, tmp_path, NOW, client_approval_requests=2)
    client, _ = broker.clients.add("asks", ["*.dev.example.com"], policy=ClientPolicy.APPROVE)
    waiting = [
        broker.devices.request_from_csr(client, csr([name]))
        for name in ("one.example.org", "two.example.org")
    ]
    assert {r.state for r in waiting} == {RequestState.AWAITING_APPROVAL}

    with pytest.raises(Throttled) as refused:
        broker.devices.request_from_csr(client, csr(["three.example.org"]))
    said = str(refused.value)
    assert "2 CSR requests awaiting an admin's approval" in said
    assert "client_approval_requests" in said and "CERTBROKER_CLIENT_APPROVAL_REQUESTS" in said
    assert "approves or denies" in said
    assert len(broker.devices.requests_in(RequestState.AWAITING_APPROVAL)) == 2

    on_the_list = broker.devices.request_from_csr(client, csr(["a.dev.example.com"]))
    assert on_the_list.state is RequestState.ACCEPTED
    broker.devices.deny(waiting[0].id, "admin", "not yours")
    third = broker.devices.request_from_csr(client, csr(["three.example.org"]))
    assert third.state is RequestState.AWAITING_APPROVAL
