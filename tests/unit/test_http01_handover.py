"""Two processes' HTTP-01 solvers on one store and one port (two `cert request --wait`
at once, no `serve`): the one holding the port keeps it while the other's tokens are out,
and the other takes the port over before it lets the CA validate. Real sockets, a real
SQLite store; the two brokers stand for the two processes."""

from __future__ import annotations

import threading
import urllib.request
from datetime import timedelta
from pathlib import Path

from certbroker.config import Settings
from certbroker.domain.keys import KeyPolicy
from certbroker.domain.models import AccountStatus, ChallengeType, NewCertificate
from certbroker.ports import ChallengeJob, PendingChallenge
from certbroker.services.common import utcnow
from certbroker.wiring import Broker, build
from tests.support.ports import free_port

LEASE = timedelta(seconds=120)


def _get(port: int, token: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        url = f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}"
        with opener.open(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _order_with_token(broker: Broker, owner: str, token: str) -> ChallengeJob:
    """A certificate whose order `owner` drives, its token presented."""
    now = utcnow()
    new = NewCertificate(
        names=[f"{token}.example.com"], account_id=1, challenge=ChallengeType.HTTP_01,
        key_type="ec-p256", key_policy=KeyPolicy.NEW, subject={}, key_sealed=None,
    )  # fmt: skip
    cert, order = broker.repo.create_certificate(new, now, owner, now + LEASE)
    broker.repo.present_challenges(order.id, owner, [(token, f"{token}.kA", "x", "http-01")], now)
    return ChallengeJob(cert, order, owner, lambda _: None, lambda: None)


def test_the_port_is_handed_over_never_dropped(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path / "data", http01_port=port, http01_address="127.0.0.1")
    first, second = build(settings), build(settings)
    first.repo.add_account(
        name="a", directory_url="https://ca/dir", ca_bundle=None, emails=[], key_type="ec-p256",
        key_sealed=b"-", uri="u", status=AccountStatus.VALID, terms_of_service=None,
        eab_kid=None, now=utcnow(),
    )  # fmt: skip
    said: list[str] = []
    holder = first.solvers[ChallengeType.HTTP_01].answering(said.append)
    holder.__enter__()
    assert said == [f"answering HTTP-01 on port {port} for the duration"]
    relying = second.solvers[ChallengeType.HTTP_01]
    relier = relying.answering(said.append)
    relier.__enter__()  # the port answers this store: the second relies on the first
    job = _order_with_token(second, "second", "tok1")
    assert _get(port, "tok1") == "tok1.kA"

    leaving = threading.Thread(target=holder.__exit__, args=(None, None, None))
    leaving.start()
    leaving.join(1.0)
    assert leaving.is_alive(), "the first stopped answering while the second's token was out"
    assert _get(port, "tok1") == "tok1.kA"

    second.repo.fail_order(job.order.id, "second", utcnow(), "done", None)  # tokens gone
    leaving.join(10.0)
    assert not leaving.is_alive(), "the first kept the port after no token was out"

    job2 = _order_with_token(second, "second", "tok2")
    relying.wait_ready(job2, [PendingChallenge("x", "tok2", "tok2.kA")])
    assert _get(port, "tok2") == "tok2.kA", "the second let the CA in with nobody answering"
    assert f"took over answering HTTP-01 on port {port}" in said
    second.repo.fail_order(job2.order.id, "second", utcnow(), "done", None)
    relier.__exit__(None, None, None)
    assert _get(port, "tok2") is None  # and it let the port go at the end
