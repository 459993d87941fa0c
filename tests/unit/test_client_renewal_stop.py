"""Issue 24: the broker stops renewing a client's certificate the client may no longer
have (a name taken off its allow-list, the client disabled or gone), before anything is
asked of the CA, with the alarm users already get for failures; a certificate whose
names are still allowed renews as before.

On a real SQLite store with a scripted CA (tests/support/scripted_ca.py), through the
services as the scheduler, the workers and `cert renew` use them; what the CA was asked
is read from the CA's own record of calls. The same story against Pebble, through the
command line and `serve`: tests/integration/test_client_renewal_stop.py.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete

from certbroker.domain.agents import KeyMode
from certbroker.domain.clients import Client, ClientPolicy, Renewal
from certbroker.domain.errors import PermanentError, UsageError
from certbroker.domain.models import (
    CertificateStatus,
    ChallengeType,
    EventKind,
    OrderPurpose,
    OrderState,
)
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.services.common import utcnow
from certbroker.services.issuance import Outcome
from certbroker.services.leases import make_owner
from certbroker.services.requests import CertificateRequest
from certbroker.store.schema import clients
from certbroker.wiring import Broker
from tests.support.scripted_ca import ScriptedCA
from tests.unit.test_order_state_machine import build


def device_csr(names: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def add_client(broker: Broker, name: str, allow: list[str], **options: object) -> Client:
    client, _token = broker.clients.add(name, allow, renewal=Renewal.BROKER, **options)  # type: ignore[arg-type]
    return client


def asked_for(broker: Broker, client: Client, names: list[str]) -> int:
    """A device's CSR, the broker renewing it with the CSR on file: the certificate's
    ID (its first order queued, not yet run)."""
    request = broker.devices.request_from_csr(
        client, device_csr(names), ChallengeType.HTTP_01, Renewal.BROKER
    )
    assert request.certificate_id is not None, request
    return request.certificate_id


def issued(broker: Broker, cert_id: int) -> str:
    result = broker.issuance.wait_for(cert_id, make_owner("worker"))
    assert result.outcome is Outcome.ISSUED, result.message
    serial = broker.certificates.get(cert_id).serial
    assert serial is not None
    return serial


def make_due(broker: Broker, cert_id: int) -> None:
    """Time passes: the certificate's renewal moment is a minute ago."""
    plan = RenewalPlan(utcnow() - timedelta(minutes=1), RenewalReason.LIFETIME)
    broker.repo.set_renewal_plan(cert_id, plan, None, utcnow())


def ordered_names(ca: ScriptedCA) -> list[tuple[str, ...]]:
    """The names of every order the CA was asked to create, in order."""
    return [tuple(call.args[0]) for call in ca.called("new_order")]


def _raise(exc: Exception) -> NoReturn:
    raise exc


def event_kinds(broker: Broker, cert_id: int) -> list[str]:
    return [e.kind.value for e in broker.certificates.events(cert_id)]


def test_a_name_taken_off_the_allow_list_stops_the_brokers_renewal_with_an_alarm(
    tmp_path: Path,
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com", "shop.example.com"])
    shop = asked_for(broker, gw, ["shop.example.com"])
    lab = asked_for(broker, gw, ["a.lab.example.com"])
    shop_serial, lab_serial = issued(broker, shop), issued(broker, lab)

    broker.clients.allow("gw1", remove=["shop.example.com"])  # an admin narrows the list
    make_due(broker, shop)
    make_due(broker, lab)
    before = ordered_names(ca)

    # The scheduler queues both (it does not know clients); the workers run them.
    assert sorted(broker.renewal.queue_due()) == sorted([shop, lab])
    stopped = broker.issuance.wait_for(shop, make_owner("worker"))
    renewed = broker.issuance.wait_for(lab, make_owner("worker"))

    # The CA was asked for the name still allowed, and for nothing else.
    assert ordered_names(ca) == [*before, ("a.lab.example.com",)]
    assert renewed.outcome is Outcome.ISSUED, renewed.message
    assert broker.certificates.get(lab).serial != lab_serial

    expected = (
        "client 'gw1' no longer allows shop.example.com (its allow-list: *.lab.example.com); "
        "renewal stopped"
    )
    assert stopped.outcome is Outcome.FAILED
    assert stopped.message.startswith(expected), stopped.message
    assert f"`certbroker cert enable {shop}`" in stopped.message
    assert stopped.order.state is OrderState.FAILED
    assert stopped.order.purpose is OrderPurpose.RENEW
    assert stopped.order.order_url is None  # never sent to the CA

    cert = broker.certificates.get(shop)
    assert cert.serial == shop_serial and cert.status is CertificateStatus.VALID  # kept
    assert cert.disabled, "its renewal was not stopped"
    assert cert.next_try_at is None
    assert cert.alarm_since is not None
    assert cert.alarm_message == stopped.message
    assert [c.id for c in broker.repo.certificates_in_alarm()] == [shop]  # `alarms`
    assert event_kinds(broker, shop)[-3:] == [
        EventKind.FAILED.value,  # what mail and webhooks hear of, as for any failure
        EventKind.ALARM_RAISED.value,
        EventKind.DISABLED.value,
    ]
    shown = broker.certificates.details(shop)
    assert shown["disabled"] is True
    assert shown["alarm"]["last_error"] == stopped.message

    # Stopped for good: the scheduler queues neither a renewal nor a retry of it.
    make_due(broker, shop)
    assert broker.renewal.queue_due() == []

    # A person renewing it by hand is told why at once, and nothing is queued.
    orders = len(broker.repo.orders_of(shop))
    with pytest.raises(UsageError) as refused:
        broker.renewal.renew(shop, make_owner("cli"))
    assert str(refused.value).startswith(
        f"certificate {shop} is not renewed: client 'gw1' no longer allows shop.example.com "
        "(its allow-list: *.lab.example.com); allow the names again"
    ), refused.value
    assert len(broker.repo.orders_of(shop)) == orders
    assert ordered_names(ca) == [*before, ("a.lab.example.com",)]

    # The fix the alarm names: allow the name again, enable the certificate.
    broker.clients.allow("gw1", add=["shop.example.com"])
    broker.renewal.enable(shop)
    assert broker.renewal.queue_due() == [shop]  # tried again at once
    assert broker.issuance.wait_for(shop, make_owner("worker")).outcome is Outcome.ISSUED
    back = broker.certificates.get(shop)
    assert back.serial != shop_serial
    assert back.alarm_since is None and not back.disabled
    assert ordered_names(ca)[-1] == ("shop.example.com",)


def test_a_disabled_clients_certificate_is_not_renewed(tmp_path: Path) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com"])
    cert_id = asked_for(broker, gw, ["b.lab.example.com"])
    serial = issued(broker, cert_id)
    broker.clients.set_enabled("gw1", False)
    make_due(broker, cert_id)
    calls = len(ca.calls)

    # `cert renew ID`: refused up front.
    with pytest.raises(UsageError, match=r"client 'gw1' is disabled; enable the client again"):
        broker.renewal.renew(cert_id, make_owner("cli"))
    # The scheduler's renewal: queued, stopped before the CA.
    assert broker.renewal.queue_due() == [cert_id]
    result = broker.issuance.wait_for(cert_id, make_owner("worker"))

    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("client 'gw1' is disabled; renewal stopped"), result.message
    assert ca.calls[calls:] == []  # not even a look at the CA
    cert = broker.certificates.get(cert_id)
    assert cert.serial == serial and cert.disabled and cert.alarm_since is not None


def test_a_retry_of_a_failing_renewal_is_stopped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way a renewal is queued in SQL (enqueue_retries): the renewal failed at
    the CA, the name left the list before its next try."""
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com", "shop.example.com"])
    cert_id = asked_for(broker, gw, ["shop.example.com"])
    serial = issued(broker, cert_id)
    make_due(broker, cert_id)
    with monkeypatch.context() as patched:  # a CA error with no problem document
        patched.setattr(ca, "new_order", lambda *a, **k: _raise(PermanentError("CA down")))
        assert broker.renewal.queue_due() == [cert_id]
        failed = broker.issuance.wait_for(cert_id, make_owner("worker"))
    assert failed.outcome is Outcome.FAILED
    failing = broker.certificates.get(cert_id)
    assert failing.next_try_at is not None and failing.alarm_since is not None
    # A person muted the CA's failure for a week ...
    broker.notify.acknowledge_alarm(cert_id, utcnow() + timedelta(days=7), "ops", "firewall")

    broker.clients.allow("gw1", remove=["shop.example.com"])
    broker.repo.set_disabled(cert_id, False, utcnow(), utcnow())  # its next try has come
    orders_at_the_ca = len(ca.called("new_order"))
    assert broker.renewal.queue_due() == [cert_id]
    (retry,) = [o for o in broker.repo.orders_of(cert_id) if o.state.active]
    result = broker.issuance.wait_for(cert_id, make_owner("worker"))

    assert result.order.id == retry.id and result.outcome is Outcome.FAILED
    assert "client 'gw1' no longer allows shop.example.com" in result.message
    assert len(ca.called("new_order")) == orders_at_the_ca
    cert = broker.certificates.get(cert_id)
    assert cert.serial == serial and cert.disabled and cert.next_try_at is None
    assert cert.alarm_message == result.message  # the alarm says why now
    assert cert.alarm_ack_until is None  # ... this is news: heard again, not muted
    assert broker.renewal.queue_due() == []


def test_a_first_order_waiting_when_the_name_left_the_list_is_not_sent(tmp_path: Path) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com"])
    cert_id = asked_for(broker, gw, ["c.lab.example.com"])  # accepted, queued
    broker.clients.allow("gw1", remove=["*.lab.example.com"])

    result = broker.issuance.wait_for(cert_id, make_owner("worker"))

    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(
        "client 'gw1' no longer allows c.lab.example.com (its allow-list: empty); issuance stopped"
    ), result.message
    assert ca.called("new_order") == []
    cert = broker.certificates.get(cert_id)
    assert cert.status is CertificateStatus.FAILED and cert.disabled
    assert cert.alarm_since is not None and cert.next_try_at is None


def test_names_an_admin_approved_off_the_list_are_still_renewed(tmp_path: Path) -> None:
    """Approval (policy `approve`) lets a client have names off its list: those never
    left it, so neither the first order nor the broker's renewals are stopped."""
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com"], policy=ClientPolicy.APPROVE)
    request = broker.devices.request_from_csr(
        gw, device_csr(["extra.example.com"]), ChallengeType.HTTP_01, Renewal.BROKER
    )
    assert request.certificate_id is None  # waits for an admin
    cert_id = broker.devices.approve(request.id, "admin").certificate_id
    assert cert_id is not None
    serial = issued(broker, cert_id)
    make_due(broker, cert_id)

    assert broker.renewal.queue_due() == [cert_id]
    assert issued(broker, cert_id) != serial
    assert not broker.certificates.get(cert_id).disabled

    broker.clients.set_enabled("gw1", False)  # but a disabled client gets nothing
    make_due(broker, cert_id)
    assert broker.renewal.queue_due() == [cert_id]
    result = broker.issuance.wait_for(cert_id, make_owner("worker"))
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("client 'gw1' is disabled; renewal stopped")


def test_a_shared_certificate_renews_while_a_client_installing_it_may_have_it(
    tmp_path: Path,
) -> None:
    """A certificate whose key the broker holds goes to every gateway that installs it
    (Parallels RAS): renewed while any of those clients may still have it."""
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    first = add_client(broker, "gw1", ["*.ras.example.com"])
    second = add_client(broker, "gw2", ["*.ras.example.com"])
    prepared = broker.requests.prepare(CertificateRequest(names=["app.ras.example.com"]))
    # What an agent's hello does for `key = "broker"` (services/agents.py).
    cert, _ = broker.requests.store(
        dataclasses.replace(prepared, client_id=first.id, label=first.name)
    )
    for client in (first, second):
        broker.repo.subscribe(client.id, cert.id, KeyMode.BROKER, utcnow())
    serial = issued(broker, cert.id)

    broker.clients.allow("gw1", remove=["*.ras.example.com"])  # gw2 still may have it
    make_due(broker, cert.id)
    assert broker.renewal.queue_due() == [cert.id]
    assert issued(broker, cert.id) != serial

    broker.clients.set_enabled("gw2", False)  # now no one may
    make_due(broker, cert.id)
    assert broker.renewal.queue_due() == [cert.id]
    result = broker.issuance.wait_for(cert.id, make_owner("worker"))
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(
        "client 'gw1' no longer allows app.ras.example.com (its allow-list: empty); "
        "client 'gw2' is disabled; renewal stopped"
    ), result.message


def test_a_client_gone_while_its_certificate_is_renewed_stops_it(tmp_path: Path) -> None:
    """`client delete` takes a client's certificates off it and disables them; a
    client found missing at the order (removed under it) stops the order the same way."""
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    gw = add_client(broker, "gw1", ["*.lab.example.com"])
    cert_id = asked_for(broker, gw, ["d.lab.example.com"])
    issued(broker, cert_id)
    make_due(broker, cert_id)
    assert broker.renewal.queue_due() == [cert_id]
    with broker.repo.engine.begin() as conn:
        conn.execute(delete(clients).where(clients.c.id == gw.id))
    calls = len(ca.calls)

    result = broker.issuance.wait_for(cert_id, make_owner("worker"))

    assert result.outcome is Outcome.FAILED
    assert result.message.startswith(f"client #{gw.id} was deleted; renewal stopped")
    assert ca.calls[calls:] == []
    assert broker.certificates.get(cert_id).disabled


def test_an_operators_certificate_is_renewed_without_looking_at_clients(tmp_path: Path) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    add_client(broker, "gw1", [])  # a client that may have nothing
    cert, _ = broker.requests.request(CertificateRequest(names=["ops.example.com"]))
    serial = issued(broker, cert.id)
    make_due(broker, cert.id)
    assert broker.renewal.queue_due() == [cert.id]
    assert issued(broker, cert.id) != serial
