"""Webhooks without a CA: the signature (against vectors computed here with hmac and the
Standard Webhooks spec's own example), the address rule against server-side request
forgery, the event names, the outbox's exactly-once in a real SQLite store written by
several writers at once, and the service's retries, dead letter and 410 Gone against a
real HTTP receiver on a free port, with the clock moved by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.errors import UsageError
from certbroker.domain.models import EventKind
from certbroker.domain.webhooks import (
    EVENT_GROUPS,
    RETRY_WINDOW,
    DeliveryState,
    check_url,
    kinds_of,
    new_secret,
    next_try,
    parse_events,
    retry_delay,
    sign,
)
from certbroker.notify.webhook import HttpWebhookSender, refused_address
from certbroker.services.common import ServiceContext
from certbroker.services.webhooks import WebhookService
from certbroker.store.db import make_engine
from certbroker.store.events import add_event
from certbroker.store.repository import Repository
from certbroker.store.schema import events, webhook_deliveries
from tests.support.webhook_receiver import Receiver
from tests.unit.conftest import LEASE, NOW, new_certificate

# -- the signature ----------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_over_id_timestamp_body_with_the_decoded_secret() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"type":"certificate.issued","data":{"names":["a.example.com"]}}'
    expected = hmac.new(key, b"msg_1." + b"1700000000." + body, hashlib.sha256).digest()
    assert sign(secret, "msg_1", 1700000000, body) == "v1," + base64.b64encode(expected).decode()
    assert sign(secret, "msg_2", 1700000000, body) != sign(secret, "msg_1", 1700000000, body)
    assert new_secret(key) == secret


def test_the_standard_webhooks_example_verifies() -> None:
    """The example in the Standard Webhooks specification."""
    assert (
        sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


# -- names, URLs, retries -----------------------------------------------------------------------


def test_event_names_map_to_the_event_kinds() -> None:
    assert parse_events("issued, Renewed") == ("issued", "renewed")
    assert parse_events("all") == tuple(EVENT_GROUPS)
    assert kinds_of(["failed"]) == {"failed", "attempt-failed"}
    assert kinds_of(["alarm"]) == {"alarm-raised", "alarm-cleared", "alarm-acknowledged"}
    assert kinds_of(["deployed"]) == {"deployed", "deploy-failed", "installed", "install-failed"}
    assert kinds_of(["expiring", "revoked"]) == {"expiring", "revoked"}
    with pytest.raises(UsageError, match="unknown event 'issud'"):
        parse_events("issud,renewed")
    with pytest.raises(UsageError, match="names no event"):
        parse_events(" , ")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("https:///path", "names no host"),
        ("https://user:pw@example.com/", "user name or password"),
        ("http://example.com:99999/", "not a URL"),
    ],
)
def test_bad_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        check_url(url)


def test_retries_double_from_the_first_pause_up_to_an_hour_for_a_day() -> None:
    first = timedelta(seconds=30)
    exact = [retry_delay(n, first=first, rand=lambda: 0.0) for n in (1, 2, 3, 8, 20)]
    assert exact == [first, 2 * first, 4 * first, timedelta(hours=1), timedelta(hours=1)]
    assert retry_delay(1, first=first, rand=lambda: 1.0) == first * 0.9
    assert next_try(NOW, NOW, 1, first) is not None
    late = NOW + RETRY_WINDOW - timedelta(seconds=10)
    assert next_try(NOW, late, 12, first) is None  # past the day: dead


# -- addresses ----------------------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",  # noqa: S104 - a test value
    "::": "unspecified",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.1": "reserved",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:10.1.2.3": "private",
    "::ffff:169.254.169.254": "link-local",
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "fec0::1": "site-local",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "kind"), sorted(REFUSED.items()))
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    found = refused_address(ipaddress.ip_address(address))
    assert found is not None and kind in found


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address)) is None


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public() -> None:
    def resolver(host: str, _port: int) -> list[str]:
        return {"mixed.example": ["93.184.215.14", "10.0.0.7"]}.get(host, ["93.184.215.14"])

    sender = HttpWebhookSender(resolver=resolver)
    with pytest.raises(UsageError) as refused:
        sender.check("https://mixed.example/hook", allow_private=False)
    message = str(refused.value)
    assert "mixed.example, which resolves to 10.0.0.7" in message
    assert "private" in message and "--allow-private" in message
    sender.check("https://mixed.example/hook", allow_private=True)
    sender.check("https://public.example/hook", allow_private=False)


def test_localhost_is_refused_through_the_systems_resolver() -> None:
    with pytest.raises(UsageError, match=r"localhost, which resolves to .*loopback"):
        HttpWebhookSender().check("http://localhost:8080/hook", allow_private=False)
    with pytest.raises(UsageError, match=r"points at ::1, a loopback address"):
        HttpWebhookSender().check("http://[::1]/hook", allow_private=False)


# -- the outbox ---------------------------------------------------------------------------------


def _event(
    repo: Repository, kind: EventKind, cert_id: int | None = None, at: datetime = NOW
) -> int:
    with repo.engine.begin() as conn:
        add_event(conn, at, kind, f"{kind.value} happened", cert_id=cert_id)
        return int(conn.execute(select(func.max(events.c.id))).scalar_one())


def _add(repo: Repository, groups: tuple[str, ...], url: str = "http://hook.example/") -> int:
    from certbroker.domain.webhooks import WebhookFormat

    webhook = repo.add_webhook(
        url=url,
        events_wanted=groups,
        format=WebhookFormat.JSON,
        allow_private=True,
        description=None,
        secret_sealed=b"sealed",
        now=NOW,
    )
    return webhook.id


def _pairs(repo: Repository) -> list[tuple[int, int]]:
    with repo.engine.connect() as conn:
        return sorted(
            (int(r.webhook_id), int(r.event_id))
            for r in conn.execute(
                select(webhook_deliveries.c.webhook_id, webhook_deliveries.c.event_id)
            )
        )


def test_a_webhook_gets_the_events_it_asked_for_after_it_was_added(repo: Repository) -> None:
    before = _event(repo, EventKind.ISSUED)
    issued = _add(repo, ("issued",))
    alarms = _add(repo, ("alarm", "failed"))
    first = _event(repo, EventKind.ISSUED)
    raised = _event(repo, EventKind.ALARM_RAISED)
    _event(repo, EventKind.RENEWAL_QUEUED)  # nobody asked for it
    attempt = _event(repo, EventKind.ATTEMPT_FAILED)
    assert repo.queue_webhook_deliveries(NOW) == 4
    assert repo.queue_webhook_deliveries(NOW) == 0  # nothing new: nothing again
    assert _pairs(repo) == sorted([(issued, first), (alarms, raised), (alarms, attempt)])
    assert before not in {e for _, e in _pairs(repo)}
    late = _add(repo, ("issued",))
    second = _event(repo, EventKind.ISSUED)
    repo.queue_webhook_deliveries(NOW)
    assert (late, first) not in _pairs(repo) and (late, second) in _pairs(repo)
    assert (issued, second) in _pairs(repo)


def test_an_event_committed_behind_the_cursor_is_still_queued(repo: Repository) -> None:
    """PostgreSQL hands out IDs before commit, so an event can commit after one with a
    higher ID; the pass looks again at the recent events behind the cursor."""
    hook = _add(repo, ("issued",))
    with repo.engine.begin() as conn:
        for event_id in (hook + 10, hook + 12):
            conn.execute(insert(events).values(id=event_id, at=NOW, kind="issued", message="m"))
    repo.queue_webhook_deliveries(NOW)
    with repo.engine.begin() as conn:  # the slow transaction commits now
        conn.execute(insert(events).values(id=hook + 11, at=NOW, kind="issued", message="m"))
        # (SQLite runs a pass only when an event is past the cursor: its IDs commit in
        # order; PostgreSQL runs every pass.)
        conn.execute(insert(events).values(id=hook + 13, at=NOW, kind="issued", message="m"))
    repo.queue_webhook_deliveries(NOW + timedelta(seconds=5))
    assert [e for _, e in _pairs(repo)] == [hook + 10, hook + 11, hook + 12, hook + 13]
    with repo.engine.begin() as conn:
        conn.execute(insert(events).values(id=hook + 14, at=NOW, kind="renewed", message="m"))
    repo.queue_webhook_deliveries(NOW + timedelta(seconds=6))  # and never twice
    assert len(_pairs(repo)) == 4


def test_writers_racing_through_the_outbox_queue_each_event_exactly_once(
    repo: Repository, tmp_path: Path
) -> None:
    """Four outboxes, each on an engine of its own (as separate processes are: they
    share only the file and its lock), while events keep arriving."""
    hooks = [_add(repo, ("issued", "renewed")), _add(repo, ("renewed",))]
    url = f"sqlite:///{tmp_path / 'store.db'}"
    stop = threading.Event()
    errors: list[BaseException] = []

    def outbox() -> None:
        other = Repository(make_engine(url))
        try:
            while not stop.is_set():
                other.queue_webhook_deliveries(NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=outbox) for _ in range(4)]
    for t in threads:
        t.start()
    made = []
    for n in range(150):
        made.append((_event(repo, EventKind.ISSUED if n % 2 else EventKind.RENEWED), n % 2))
    stop.set()
    for t in threads:
        t.join(60)
    assert errors == []
    repo.queue_webhook_deliveries(NOW)
    expected = sorted(
        [(hooks[0], e) for e, _ in made] + [(hooks[1], e) for e, odd in made if not odd]
    )
    assert _pairs(repo) == expected


# -- the service against a real receiver ----------------------------------------------------------


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def service(repo: Repository, clock: Clock) -> WebhookService:
    ctx = ServiceContext(repo=repo, sealer=Sealer(new_master_key()), ca_factory=None, clock=clock)  # type: ignore[arg-type]
    return WebhookService(ctx, HttpWebhookSender(), retry_first=timedelta(seconds=30))


@pytest.fixture
def receiver_factory() -> Iterator[Callable[[Callable[[int], int]], Receiver]]:
    started: list[Receiver] = []

    def make(answer: Callable[[int], int]) -> Receiver:
        r = Receiver(answer).__enter__()
        started.append(r)
        return r

    yield make
    for r in started:
        r.__exit__(None, None, None)


def _issued_event(repo: Repository, clock: Clock) -> int:
    cert, _ = repo.create_certificate(new_certificate("hook.example.com"), NOW, "w", NOW + LEASE)
    return _event(repo, EventKind.ISSUED, cert.id, at=clock())


def test_a_failed_delivery_is_retried_with_the_same_id_and_body_until_delivered(
    repo: Repository,
    service: WebhookService,
    clock: Clock,
    receiver_factory: Callable[[Callable[[int], int]], Receiver],
) -> None:
    receiver = receiver_factory(lambda n: 500 if n == 1 else 200)
    webhook, secret = service.add(receiver.url, "issued", allow_private=True)
    receiver.secret = secret
    event_id = _issued_event(repo, clock)
    service.queue()
    (failed,) = service.run_due()
    assert failed.state is DeliveryState.FAILED and failed.last_status == 500
    assert failed.last_response == "status 500 from the test receiver"
    assert failed.next_try_at is not None
    assert timedelta(seconds=27) <= failed.next_try_at - clock() <= timedelta(seconds=30)
    assert service.run_due() == []  # not due yet
    clock.advance(timedelta(seconds=31))
    (delivered,) = service.run_due()
    assert delivered.state is DeliveryState.DELIVERED and delivered.attempts == 2
    first, second = receiver.requests()
    assert first.signature_ok and second.signature_ok
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == failed.message_id
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) - int(first.headers["webhook-timestamp"]) == 31
    assert first.headers["content-type"] == "application/json"
    assert first.headers["user-agent"].startswith("certbroker/")
    payload = json.loads(first.body)
    assert payload["type"] == "certificate.issued"
    assert payload["data"]["event_id"] == event_id
    assert payload["data"]["names"] == ["hook.example.com"]
    assert datetime.fromisoformat(payload["timestamp"]) == NOW
    assert service.counts() == {"delivered": 1, "failed": 1, "dead": 0}
    assert webhook.id == delivered.webhook_id


def test_a_delivery_failing_for_a_day_is_dead_until_retried(
    repo: Repository,
    service: WebhookService,
    clock: Clock,
    receiver_factory: Callable[[Callable[[int], int]], Receiver],
) -> None:
    receiver = receiver_factory(lambda n: 503 if n < 3 else 204)
    service.add(receiver.url, "issued", allow_private=True)
    _issued_event(repo, clock)
    service.queue()
    (first,) = service.run_due()
    assert first.state is DeliveryState.FAILED
    clock.advance(RETRY_WINDOW)  # a day of failures later
    (dead,) = service.run_due()
    assert dead.state is DeliveryState.DEAD and dead.next_try_at is None
    assert "a day after the first attempt" in (dead.last_error or "")
    clock.advance(timedelta(hours=2))
    assert service.run_due() == []  # dead stays dead
    assert [d.id for d in service.deliveries(state="dead")] == [dead.id]
    assert service.counts() == {"delivered": 0, "failed": 2, "dead": 1}
    again = service.retry(dead.id)
    assert again.state is DeliveryState.QUEUED
    (delivered,) = service.run_due()
    assert delivered.state is DeliveryState.DELIVERED and delivered.attempts == 3
    assert len({r.headers["webhook-id"] for r in receiver.requests()}) == 1
    with pytest.raises(UsageError, match="only a dead or failed one"):
        service.retry(dead.id)


def test_410_gone_disables_the_webhook(
    repo: Repository,
    service: WebhookService,
    clock: Clock,
    receiver_factory: Callable[[Callable[[int], int]], Receiver],
) -> None:
    receiver = receiver_factory(lambda _n: 410)
    webhook, _ = service.add(receiver.url, "issued", allow_private=True)
    _issued_event(repo, clock)
    service.queue()
    (gone,) = service.run_due()
    assert gone.state is DeliveryState.DEAD and gone.last_status == 410
    disabled = service.get(webhook.id)
    assert not disabled.enabled and "410" in (disabled.disabled_reason or "")
    _issued_event(repo, clock)
    service.queue()
    assert service.run_due() == [] and len(receiver.requests()) == 1
    assert service.set_enabled(webhook.id, True).enabled


def test_a_name_that_now_resolves_to_a_private_address_is_not_sent_to(
    repo: Repository,
    clock: Clock,
    receiver_factory: Callable[[Callable[[int], int]], Receiver],
) -> None:
    """The address is checked again before each send: DNS can change after `add`."""
    receiver = receiver_factory(lambda _n: 200)
    port = receiver.url.split(":")[2].split("/")[0]
    answers = {"hooks.example": ["93.184.215.14"]}

    def resolver(host: str, _port: int) -> list[str]:
        return answers[host]

    ctx = ServiceContext(repo=repo, sealer=Sealer(new_master_key()), ca_factory=None, clock=clock)  # type: ignore[arg-type]
    service = WebhookService(ctx, HttpWebhookSender(resolver=resolver))
    service.add(f"http://hooks.example:{port}/hook", "issued")
    answers["hooks.example"] = ["127.0.0.1"]  # rebinding to the broker's own host
    _issued_event(repo, clock)
    service.queue()
    (refused,) = service.run_due()
    assert refused.state is DeliveryState.FAILED and refused.last_status is None
    assert "refused" in (refused.last_error or "") and "loopback" in (refused.last_error or "")
    assert receiver.requests() == []


def test_the_secret_is_sealed_and_bad_input_stores_nothing(
    repo: Repository, service: WebhookService
) -> None:
    for url, events_ in [
        ("http://10.1.2.3/", "issued"),
        ("http://169.254.169.254/latest/meta-data", "issued"),
        ("https://example.com/", "issued,bogus"),
        ("gopher://example.com/", "issued"),
    ]:
        with pytest.raises(UsageError):
            service.add(url, events_)
    assert service.all() == []
    webhook, secret = service.add("http://127.0.0.1:9/", "all", "slack", allow_private=True)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert secret.encode() not in repo.webhook_secret_sealed(webhook.id)
    assert json.dumps(webhook.to_json()).find(secret) == -1
    assert webhook.events == tuple(EVENT_GROUPS)
