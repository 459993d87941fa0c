"""An order's state machine on a real SQLite store, driven by a scripted CA.

The branches here are the ones Pebble cannot easily be made to take (an unknown order
status, several names failing at once, an order that went invalid while its process was
gone, a manual DNS-01 order the CA forgot, a lease lost between two steps). Each test goes
through the services as the CLI and the workers do (request, run, wait_for, verify) and
reads the result as `cert show --json` and `certbroker events` do. Where a test checks the
order of steps, its assertion names the transition that was expected.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from certbroker.config import Settings
from certbroker.crypto.keys import PrivateKey, generate_private_key, private_key_to_pem
from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.dns import challenge_record_name, txt_value
from certbroker.domain.errors import AcmeProblem, PermanentError, TransientError
from certbroker.domain.keys import KeyType
from certbroker.domain.models import (
    AccountStatus,
    Certificate,
    CertificateStatus,
    ChallengeType,
    EventKind,
    Order,
    OrderState,
)
from certbroker.domain.renewal import RenewalReason
from certbroker.ports import CertificateAuthority, RenewalInfo
from certbroker.services.common import ServiceContext, utcnow
from certbroker.services.issuance import Outcome
from certbroker.services.leases import make_owner
from certbroker.services.requests import CertificateRequest
from certbroker.store.db import make_engine, migrate
from certbroker.store.repository import Repository
from certbroker.wiring import Broker
from tests.support.scripted_ca import Call, Killed, ScriptedCA, validation_problem

NAMES = ("a.example.com", "b.example.com")
LEASE = timedelta(seconds=120)


class OfflineLookups:
    """Stands in for DNS (certbroker.dns.propagation.DnsLookups) because these tests are
    about the order's states; real DNS is covered in tests/integration/test_dns01.py.
    No CNAMEs, one authoritative server, every record visible at once; it remembers what
    it was asked to check."""

    def __init__(self) -> None:
        self.checked: list[tuple[str, str]] = []  # (record name, value)

    def cname_target(self, name: str) -> str:
        return name

    def authoritative_servers(self, name: str) -> tuple[tuple[str, int], ...]:
        return (("192.0.2.53", 53),)

    def wait_visible(
        self,
        checks: Sequence[tuple[tuple[str, int], str, str]],
        timeout: float,
        between: Callable[[], None] = lambda: None,
    ) -> float:
        self.checked.extend((name, value) for _, name, value in checks)
        return 0.0


def build(tmp_path: Path, ca: ScriptedCA, **settings: Any) -> Broker:
    """The services over a migrated SQLite file in tmp_path, every CA call going to `ca`,
    with one ACME account (its key really sealed). The one place that knows constructors."""
    config = Settings(data_dir=tmp_path, **settings)
    engine = make_engine(config.effective_database_url)
    migrate(engine)
    sealer = Sealer(new_master_key())
    repo = Repository(engine)

    def ca_factory(
        directory_url: str, key: PrivateKey, account_uri: str | None, ca_bundle: str | None
    ) -> CertificateAuthority:
        return ca

    ctx = ServiceContext(repo=repo, sealer=sealer, ca_factory=ca_factory)
    lookups = OfflineLookups()
    broker = Broker(settings=config, repo=repo, ctx=ctx, dns_lookups=lambda: lookups)
    broker.issuance.sleep = lambda seconds: None  # polls and retries without waiting
    repo.add_account(
        name="main",
        directory_url="https://ca.test/acme/directory",
        ca_bundle=None,
        emails=["main@example.com"],
        key_type=KeyType.EC_P256.value,
        key_sealed=sealer.seal(private_key_to_pem(generate_private_key(KeyType.EC_P256))),
        uri="https://ca.test/acme/acct/1",
        status=AccountStatus.VALID,
        terms_of_service=None,
        eab_kid=None,
        now=utcnow(),
    )
    return broker


def request(
    broker: Broker, owner: str, names: Sequence[str] = NAMES, **options: Any
) -> tuple[Certificate, Order]:
    return broker.requests.request(CertificateRequest(names=list(names), **options), owner)


def record_states(broker: Broker, ca: ScriptedCA, order_id: int) -> list[tuple[str, str]]:
    """(CA method, the order's state in the store when the CA was called), call by call."""
    seen: list[tuple[str, str]] = []

    def listener(call: Call) -> None:
        seen.append((call.method, broker.repo.get_order(order_id).state.value))

    ca.listeners.append(listener)
    return seen


def states_at(seen: list[tuple[str, str]], method: str) -> list[str]:
    return [state for called, state in seen if called == method]


def kill_at(broker: Broker, ca: ScriptedCA, order_id: int, method: str, state: OrderState) -> None:
    """Stands for SIGKILL: the process dies as it calls `method` while the store holds
    `state`. The CA records the call but does not act on it; the store keeps `state`."""

    def listener(call: Call) -> None:
        if call.method == method and broker.repo.get_order(order_id).state is state:
            raise Killed(f"killed at {method} in {state.value}")

    ca.listeners.append(listener)


@pytest.fixture(scope="module")
def dead_owners() -> Callable[[], str]:
    """Lease owners naming a process of this host that has ended (as a killed one has),
    so `claim` takes their orders over at once (issuance.holder_is_dead)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return lambda: f"{socket.gethostname()}:{child.pid}:{secrets.token_hex(4)}:killed"


def serial_of(fullchain: str) -> str:
    return format(x509.load_pem_x509_certificate(fullchain.encode()).serial_number, "x")


def kinds(broker: Broker, cert_id: int) -> list[str]:
    return [e.kind.value for e in broker.certificates.events(cert_id)]


# -- the happy path ----------------------------------------------------------------------


def test_each_state_is_recorded_before_the_next_ca_call(tmp_path: Path) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    owner = make_owner("test")
    cert, order = request(broker, owner)
    seen = record_states(broker, ca, order.id)
    tokens_when_answering: list[dict[str, str | None]] = []

    def tokens(call: Call) -> None:
        if call.method == "answer_challenge":
            held = ca.orders[0].tokens
            tokens_when_answering.append({t: broker.repo.key_authorization(t) for t in held})

    ca.listeners.append(tokens)

    result = broker.issuance.run(order.id, owner)

    assert result.outcome is Outcome.ISSUED, result.message
    assert states_at(seen, "new_order") == ["queued"], (
        f"expected queued (nothing recorded) when new_order is sent, saw {seen}"
    )
    assert states_at(seen, "get_authorization") == ["ordered", "ordered"], (
        f"expected queued -> ordered before get_authorization, saw {seen}"
    )
    assert states_at(seen, "answer_challenge") == ["presented", "presented"], (
        f"expected ordered -> presented before answer_challenge, saw {seen}"
    )
    every_token = {t: f"{t}.thumb" for t in ca.orders[0].tokens}
    assert tokens_when_answering[0] == every_token, (
        "expected every name's token stored before the first answer_challenge (present "
        f"all before answering any), saw {tokens_when_answering[0]}"
    )
    assert states_at(seen, "get_order") == ["answered"], (
        f"expected presented -> answered before polling the order (get_order), saw {seen}"
    )
    assert states_at(seen, "finalize") == ["finalizing"], (
        f"expected answered -> finalizing before finalize, saw {seen}"
    )
    assert states_at(seen, "download_certificate") == ["finalizing"], (
        f"expected finalizing until download_certificate, saw {seen}"
    )
    final = broker.repo.get_order(order.id)
    assert final.state is OrderState.VALID, (
        f"expected finalizing -> valid after download_certificate, saw {final.state.value}"
    )
    walked = [s for i, (_, s) in enumerate(seen) if i == 0 or seen[i - 1][1] != s]
    assert [*walked, final.state.value] == [
        "queued",
        "ordered",
        "presented",
        "answered",
        "finalizing",
        "valid",
    ], f"expected queued -> ordered -> presented -> answered -> finalizing -> valid, saw {seen}"

    data = broker.certificates.details(cert.id)
    assert data["status"] == "valid"
    assert data["serial"] == serial_of(ca.issued[f"{ca.orders[0].url}/cert"])
    assert data["order_url"] == ca.orders[0].url
    assert [(a["state"], a["attempts"]) for a in data["attempts"]] == [("valid", 0)]
    assert kinds(broker, cert.id) == [EventKind.ISSUED.value]
    assert all(broker.repo.key_authorization(t) is None for t in ca.orders[0].tokens), (
        "expected the tokens deleted when the order became valid"
    )


# -- (a) an order status no RFC knows -----------------------------------------------------


def test_an_unknown_order_status_fails_the_order_for_good_naming_it(tmp_path: Path) -> None:
    ca = ScriptedCA()
    ca.next_orders.append({"status": "weird"})
    broker = build(tmp_path, ca)
    owner = make_owner("test")
    cert, _ = request(broker, owner)

    result = broker.issuance.wait_for(cert.id, owner)

    assert result.outcome is Outcome.FAILED
    assert "unknown order status 'weird'" in result.message
    data = broker.certificates.details(cert.id)
    assert data["status"] == "failed"
    assert [(a["state"], a["attempts"]) for a in data["attempts"]] == [("failed", 0)], (
        "expected queued -> ordered -> failed at once, with no attempt counted for a retry"
    )
    assert "unknown order status 'weird'" in data["attempts"][0]["error"]
    assert kinds(broker, cert.id) == [EventKind.FAILED.value, EventKind.ALARM_RAISED.value]
    assert "'weird'" in broker.certificates.events(cert.id)[0].message
    assert [c.method for c in ca.calls] == ["new_order"], (
        f"expected nothing asked of the CA after the unknown status, saw {ca.calls}"
    )
    assert broker.repo.active_order_of(cert.id) is None


# -- (b) several names fail validation ------------------------------------------------------


def test_two_failed_names_are_stored_as_one_compound_problem(tmp_path: Path) -> None:
    refused = validation_problem("connection refused")
    wrong = validation_problem("the key authorization did not match")
    ca = ScriptedCA()
    ca.next_orders.append({"failing": {NAMES[0]: refused, NAMES[1]: wrong}})
    broker = build(tmp_path, ca)
    owner = make_owner("test")
    cert, _ = request(broker, owner)

    result = broker.issuance.wait_for(cert.id, owner)

    assert result.outcome is Outcome.FAILED
    assert len(ca.called("answer_challenge")) == 2
    assert not ca.called("finalize")
    data = broker.certificates.details(cert.id)  # what `cert show --json` prints
    assert data["status"] == "failed"
    problem = data["attempts"][-1]["problem"]
    assert problem["type"] == "urn:ietf:params:acme:error:compound"
    assert {s["identifier"]: s["detail"] for s in problem["subproblems"]} == {
        NAMES[0]: "connection refused",
        NAMES[1]: "the key authorization did not match",
    }
    assert all(s["type"].endswith(":incorrectResponse") for s in problem["subproblems"])
    failed = [e for e in broker.certificates.events(cert.id) if e.kind is EventKind.FAILED]
    assert len(failed) == 1
    assert failed[0].problem is not None and failed[0].problem.code == "compound"
    assert [p.identifier for p in failed[0].problem.subproblems] == list(NAMES)
    assert f"[http-01 challenge for {NAMES[0]}, {NAMES[1]}]" in failed[0].message
    shown = [e for e in data["events"] if e["kind"] == "failed"]
    assert shown[0]["problem"]["subproblems"] == problem["subproblems"]


# -- (c) invalid after a resume -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "died_in"),
    [("answer_challenge", OrderState.PRESENTED), ("get_order", OrderState.ANSWERED)],
)
def test_an_interrupted_order_the_ca_found_invalid_is_ordered_again(
    tmp_path: Path, dead_owners: Callable[[], str], method: str, died_in: OrderState
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    killed = dead_owners()
    cert, order = request(broker, killed)
    kill_at(broker, ca, order.id, method, died_in)
    with pytest.raises(Killed):
        broker.issuance.run(order.id, killed)
    assert broker.repo.get_order(order.id).state is died_in
    # While nobody ran, the CA validated: the responder had gone with the process.
    ca.orders[0].failing = {name: validation_problem() for name in NAMES}
    ca.orders[0].validated_while_away()
    ca.listeners.clear()

    result = broker.issuance.wait_for(cert.id, make_owner("resume"))

    assert result.outcome is Outcome.ISSUED, result.message
    assert len(ca.called("new_order")) == 2, (
        f"expected {died_in.value} -> ordered (a new order at the CA) after the CA said "
        f"invalid, saw {[c.method for c in ca.calls]}"
    )
    after = broker.repo.get_order(order.id)
    assert (after.state, after.attempts, after.order_url) == (
        OrderState.VALID,
        1,
        ca.orders[1].url,
    ), "expected one attempt counted and the second order finishing the same order row"
    attempt = [e for e in broker.certificates.events(cert.id) if e.kind is EventKind.ATTEMPT_FAILED]
    assert len(attempt) == 1
    assert "the interrupted order failed validation" in attempt[0].message
    assert attempt[0].problem is not None and attempt[0].problem.code == "compound"
    data = broker.certificates.details(cert.id)
    assert data["status"] == "valid"
    assert len(ca.issued) == 1


def test_an_interrupted_order_fails_when_its_attempts_are_used_up(
    tmp_path: Path, dead_owners: Callable[[], str]
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca, retry_attempts=2)
    first = dead_owners()
    cert, order = request(broker, first)
    kill_at(broker, ca, order.id, "answer_challenge", OrderState.PRESENTED)
    with pytest.raises(Killed):
        broker.issuance.run(order.id, first)
    ca.orders[0].failing = {name: validation_problem() for name in NAMES}
    ca.orders[0].validated_while_away()

    second = dead_owners()  # takes over from the dead first, and is killed the same way
    assert broker.issuance.leases.claim(order.id, second)
    with pytest.raises(Killed):
        broker.issuance.run(order.id, second)
    state = broker.repo.get_order(order.id)
    assert (state.state, state.attempts, len(ca.orders)) == (OrderState.PRESENTED, 1, 2), (
        "expected presented -> ordered -> presented on a second order, one attempt counted"
    )
    ca.orders[1].failing = {name: validation_problem() for name in NAMES}
    ca.orders[1].validated_while_away()
    ca.listeners.clear()

    result = broker.issuance.wait_for(cert.id, make_owner("resume"))

    assert result.outcome is Outcome.FAILED
    assert "the CA marked the order invalid" in result.message
    assert "gave up after 2 attempts" in result.message  # says why it stopped ordering again
    assert len(ca.called("new_order")) == 2, (
        "expected presented -> failed with the attempts used up, not a third order"
    )
    assert not ca.called("finalize")
    data = broker.certificates.details(cert.id)
    assert data["status"] == "failed"
    assert [(a["state"], a["attempts"]) for a in data["attempts"]] == [("failed", 1)]
    events = kinds(broker, cert.id)
    assert events.count(EventKind.ATTEMPT_FAILED.value) == 1
    assert events.count(EventKind.FAILED.value) == 1


# -- (d) a manual DNS-01 order that expired ---------------------------------------------------


@pytest.mark.parametrize("what_the_ca_did", ["forgot the order", "marked it invalid"])
def test_an_expired_manual_dns_order_asks_for_a_new_challenge(
    tmp_path: Path, what_the_ca_did: str
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    name = NAMES[0]
    owner = make_owner("cli")
    cert, order = request(
        broker, owner, [name], challenge=ChallengeType.DNS_01, dns_account="manual"
    )
    shown = broker.issuance.run(order.id, owner)
    assert shown.outcome is Outcome.AWAITING, shown.message
    assert broker.repo.get_order(order.id).state is OrderState.AWAITING_DNS
    old_value = txt_value(f"{ca.orders[0].token(name, 'dns-01')}.thumb")
    assert [r.value for r in broker.repo.dns_records_of(order.id)] == [old_value]

    # The person took longer than the CA keeps an order.
    if what_the_ca_did == "forgot the order":
        ca.orders[0].forgotten = True
    else:
        ca.orders[0].status = "invalid"
    told = broker.issuance.verify(cert.id, make_owner("cli"), new_challenge=False)

    assert told.outcome is Outcome.AWAITING
    assert f"`certbroker cert verify {cert.id} --new-challenge`" in told.message
    data = broker.certificates.details(cert.id)
    assert f"cert verify {cert.id} --new-challenge" in data["attempts"][0]["error"]
    assert data["status"] == "pending" and data["serial"] is None
    assert data["alarm"] is not None, "nobody was told the records can no longer work"
    assert "--new-challenge" in data["alarm"]["last_error"]
    told_events = [e for e in data["events"] if e["kind"] == "awaiting-dns"]
    assert any("--new-challenge" in e["message"] for e in told_events)
    held = broker.repo.get_order(order.id)
    assert (held.state, held.order_url) == (OrderState.AWAITING_DNS, ca.orders[0].url), (
        "expected awaiting-dns kept (no new order) until --new-challenge"
    )
    for nothing in ("new_order", "answer_challenge", "finalize"):
        assert len(ca.called(nothing)) == (1 if nothing == "new_order" else 0), (
            f"expected no {nothing} after the CA {what_the_ca_did}, saw {ca.calls}"
        )
    lookups = broker.dns.lookups
    assert isinstance(lookups, OfflineLookups)
    assert lookups.checked == []

    again = broker.issuance.verify(cert.id, make_owner("cli"), new_challenge=True)

    assert again.outcome is Outcome.AWAITING, again.message
    assert "write these TXT records" in again.message
    assert len(ca.orders) == 2
    restarted = broker.repo.get_order(order.id)
    assert (restarted.state, restarted.order_url) == (OrderState.AWAITING_DNS, ca.orders[1].url), (
        "expected awaiting-dns -> queued -> ordered -> awaiting-dns on a new order"
    )
    new_value = txt_value(f"{ca.orders[1].token(name, 'dns-01')}.thumb")
    assert [r.value for r in broker.repo.dns_records_of(order.id)] == [new_value]

    done = broker.issuance.verify(cert.id, make_owner("cli"), new_challenge=False)

    assert done.outcome is Outcome.ISSUED, done.message
    assert lookups.checked == [(challenge_record_name(name), new_value)]
    assert len(ca.called("finalize")) == 1
    assert broker.certificates.details(cert.id)["status"] == "valid"
    assert broker.repo.dns_records_of(order.id) == []


# -- (e) a lease lost between two steps -----------------------------------------------------


def test_a_run_that_lost_its_lease_stops_and_the_new_holder_finishes(tmp_path: Path) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    first, second = make_owner("first"), make_owner("second")
    cert, order = request(broker, first)
    taken: list[Order] = []

    def take_the_lease(call: Call) -> None:
        """Once ORDERED is recorded, `second` takes the lease (as after an expiry)."""
        if call.method == "get_authorization" and not taken:
            assert broker.repo.get_order(order.id).state is OrderState.ORDERED
            later = utcnow() + LEASE + timedelta(seconds=1)
            assert broker.repo.try_claim(order.id, second, later, later + LEASE, None)
            taken.append(broker.repo.get_order(order.id))

    ca.listeners.append(take_the_lease)

    lost = broker.issuance.run(order.id, first)

    assert lost.outcome is Outcome.BUSY, lost.message
    assert taken, "the lease was never taken: the run made no get_authorization call"
    assert broker.repo.get_order(order.id) == taken[0], (
        "expected the store left at ordered (held by the new owner), nothing written by "
        "the run that lost the lease"
    )
    assert all(broker.repo.key_authorization(t) is None for t in ca.orders[0].tokens)
    assert broker.certificates.events(cert.id) == []
    assert not ca.called("answer_challenge")
    ca.listeners.clear()

    result = broker.issuance.wait_for(cert.id, second)

    assert result.outcome is Outcome.ISSUED, result.message
    assert len(ca.called("new_order")) == 1, "expected the new owner to resume the order"
    assert len(ca.called("finalize")) == 1
    assert len(ca.issued) == 1
    data = broker.certificates.details(cert.id)
    assert data["status"] == "valid"
    assert data["serial"] == serial_of(next(iter(ca.issued.values())))
    assert [a["state"] for a in data["attempts"]] == ["valid"]
    assert kinds(broker, cert.id) == [EventKind.ISSUED.value]
    assert broker.certificates.search(CertificateStatus.VALID) == [broker.certificates.get(cert.id)]


def test_a_ca_answering_a_past_window_every_time_cannot_make_renewal_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first past window renews at once (the CA asks for it, say before a
    revocation); the certificate that renewal brings is held off for 1 % of its lifetime,
    at its arrival and whenever the window is asked for again."""
    ca = ScriptedCA(renewal_info=True)

    def always_past(cert_id: str) -> RenewalInfo:
        now = utcnow()
        return RenewalInfo(start=now - timedelta(days=2), end=now - timedelta(days=1))

    monkeypatch.setattr(ca, "renewal_info", always_past)
    broker = build(tmp_path, ca)
    owner = make_owner("cli")
    cert, _ = request(broker, owner, ["loop.example.com"])
    assert broker.issuance.wait_for(cert.id, owner).outcome is Outcome.ISSUED
    assert broker.certificates.get(cert.id).renewal_reason is RenewalReason.ARI_PAST

    assert broker.renewal.queue_due() == [cert.id]  # renewed once, as the CA asked
    renewed = broker.issuance.wait_for(cert.id, make_owner("worker"))
    assert renewed.outcome is Outcome.ISSUED, renewed.message
    after = broker.certificates.get(cert.id)
    assert after.renewal_reason is RenewalReason.ARI_GUARDED
    assert after.renew_at is not None and after.not_after is not None
    assert after.renew_at - utcnow() > timedelta(hours=20)  # 1 % of 90 days: 21.6 h
    assert broker.renewal.queue_due() == [], "the new certificate was renewed again at once"

    broker.repo.postpone_ari_check(cert.id, utcnow() - timedelta(seconds=1))
    assert broker.renewal.refresh_renewal_info() == 1  # the window asked for again
    assert broker.certificates.get(cert.id).renew_at == after.renew_at
    assert broker.renewal.queue_due() == [], "asking the window again renewed it at once"


def test_an_account_the_ca_forgot_is_named_with_the_command_that_fixes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ScriptedCA()
    forgotten = AcmeProblem(
        "urn:ietf:params:acme:error:accountDoesNotExist", "no account for this key", 400
    )
    real_new_order = ca.new_order
    calls = {"n": 0}

    def new_order(names: Sequence[str], **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise PermanentError("the CA refused to create the order", forgotten)
        return real_new_order(names, **kw)

    monkeypatch.setattr(ca, "new_order", new_order)
    broker = build(tmp_path, ca)
    owner = make_owner("cli")
    cert, _ = request(broker, owner, ["forgotten.example.com"])
    result = broker.issuance.wait_for(cert.id, owner)
    assert result.outcome is Outcome.FAILED
    assert "no longer knows account 'main' (accountDoesNotExist" in result.message
    assert "`certbroker account recreate main` registers its key again" in result.message
    failing = broker.certificates.get(cert.id)
    assert failing.next_try_at is not None
    assert failing.next_try_at - utcnow() > timedelta(hours=5)  # no retry fixes it alone

    account = broker.accounts.recreate("main")
    assert [c.method for c in ca.calls].count("register") == 1
    assert account.uri is not None
    assert broker.certificates.get(cert.id).next_try_at <= utcnow()  # type: ignore[operator]
    assert broker.renewal.queue_due() == [cert.id]
    assert broker.issuance.wait_for(cert.id, owner).outcome is Outcome.ISSUED


def test_a_rate_limited_certificate_is_not_tried_again_before_the_cas_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ScriptedCA()
    limited = AcmeProblem("urn:ietf:params:acme:error:rateLimited", "too many orders", 429)

    def new_order(names: Sequence[str], **kw: Any) -> Any:
        raise TransientError("the CA is rate-limiting", limited, retry_after=3 * 3600.0)

    monkeypatch.setattr(ca, "new_order", new_order)
    broker = build(tmp_path, ca, retry_attempts=1)
    owner = make_owner("cli")
    cert, order = request(broker, owner, ["limited.example.com"])
    assert broker.issuance.run(order.id, owner).outcome is Outcome.FAILED
    next_try_at = broker.certificates.get(cert.id).next_try_at
    assert next_try_at is not None
    assert next_try_at - utcnow() > timedelta(hours=2, minutes=59)  # not the usual minute
