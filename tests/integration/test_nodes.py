"""Several `serve` nodes on one PostgreSQL (issue 17): certificates requested through the
API of any node are issued once each, also when a node is SIGKILLed half-way; the orders
it held are resumed by the others once its leases expire, and none stays leased.

Pebble runs in always-valid mode: the nodes share no HTTP-01 port here, and what is under
test is who orders what, not validation (test_nodes_balanced.py puts nginx in front of
the nodes' responders and lets Pebble validate through it).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.acme_peek import post_as_get
from tests.support.nodes import Cluster, start_cluster
from tests.support.pebble import start_pebble
from tests.support.ports import free_port
from tests.support.postgres import PostgresServer
from tests.support.smtp import SmtpServer

CERTIFICATES = 200


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer) -> Iterator[Cluster]:
    with start_pebble(
        tmp_path / "pebble", http_port=free_port(), always_valid=True,
        env={"PEBBLE_WFE_ORDERS_PER_PAGE": str(CERTIFICATES * 10)},
    ) as pebble:  # fmt: skip
        yield from start_cluster(tmp_path, postgres, pebble)


def test_three_nodes_issue_each_certificate_once_though_one_is_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    for n in range(3):
        cluster.start_node(n, tmp_path)
    cluster.wait_up()
    alive = [0, 1, 2]

    def valid() -> int:
        return int(cluster.sql("SELECT count(*) FROM certificates WHERE status = 'valid'")[0][0])

    def held_by_node1() -> int:
        return int(
            cluster.sql(
                "SELECT count(*) FROM orders WHERE lease_owner LIKE 'node1:%' "
                "AND state NOT IN ('valid', 'failed')"
            )[0][0]
        )

    held = 0
    with ThreadPoolExecutor(6) as pool:
        posted = pool.map(lambda n: cluster.request(n, alive), range(CERTIFICATES))
        # Mid-run, while requests still come: node 1 dies holding orders.
        deadline = time.monotonic() + 120
        while (held := held_by_node1()) == 0 or valid() < 20:
            assert time.monotonic() < deadline, "node 1 takes no orders"
            time.sleep(0.05)
        alive.remove(1)
        os.kill(cluster.nodes[1].pid, signal.SIGKILL)
        cluster.nodes[1].wait()
        list(posted)
    deadline = time.monotonic() + 300
    while valid() < CERTIFICATES:
        assert time.monotonic() < deadline, (
            f"{valid()} of {CERTIFICATES} valid; the nodes' logs:\n"
            + "\n".join(log.read_text()[-2000:] for log in cluster.logs)
        )
        time.sleep(0.5)

    # Each certificate: one order, valid; nothing left leased or waiting.
    per_cert = cluster.sql(
        "SELECT certificate_id, count(*), min(state), max(state) FROM orders "
        "GROUP BY certificate_id"
    )
    assert len(per_cert) == CERTIFICATES  # none twice: retried requests were recognised
    assert {(row[1], row[2], row[3]) for row in per_cert} == {(1, "valid", "valid")}
    assert cluster.sql("SELECT count(*) FROM orders WHERE lease_owner IS NOT NULL")[0][0] == 0
    assert held > 0  # the killed node held orders: what this test is about
    # At the CA: exactly as many orders as certificates, the ones the store names.
    urls = {str(row[0]).rpartition("/")[2] for row in cluster.sql("SELECT order_url FROM orders")}
    at_ca = {url.rpartition("/")[2] for url in cluster.ca_orders(tmp_path)}
    assert at_ca == urls and len(at_ca) == CERTIFICATES


RENEWALS = 30


def test_three_schedulers_renew_each_due_certificate_once_and_mail_once(
    cluster: Cluster, tmp_path: Path, smtp: SmtpServer
) -> None:
    smtp.clear()
    cluster.cli.env.update(smtp.env())
    names = [f"due-{n:02d}.example.com" for n in range(RENEWALS)]
    cluster.cli("cert", "request", *names[:1], "--wait")
    cluster.cli("cert", "request", "--from", "-", input="\n".join(names[1:]) + "\n")
    queued = json.loads(cluster.cli("cert", "list", "--json").stdout)
    assert len(queued) == RENEWALS  # the first issued, the rest queued: the nodes issue them
    for n in range(3):
        cluster.start_node(n, tmp_path)
    cluster.wait_up()

    def count(statement: str) -> int:
        return int(cluster.sql(statement)[0][0])

    deadline = time.monotonic() + 180
    while count("SELECT count(*) FROM certificates WHERE status = 'valid'") < RENEWALS:
        assert time.monotonic() < deadline, "the nodes do not issue"
        time.sleep(0.5)
    # Time passes for the store: every certificate is due, and the first nears its end.
    cluster.sql("UPDATE certificates SET renew_at = now() - interval '1 minute'")
    deadline = time.monotonic() + 180
    while count("SELECT count(*) FROM orders WHERE purpose = 'renew' AND state = 'valid'") < (
        RENEWALS
    ):
        assert time.monotonic() < deadline, "the nodes do not renew"
        time.sleep(0.5)
    time.sleep(3)  # three more ticks of every scheduler: nothing renewed twice
    renewals = cluster.sql(
        "SELECT certificate_id, count(*) FROM orders WHERE purpose = 'renew' "
        "GROUP BY certificate_id"
    )
    assert len(renewals) == RENEWALS and {row[1] for row in renewals} == {1}

    cluster.sql(
        "UPDATE certificates SET not_after = now() + interval '2 days 12 hours' WHERE id = 1"
    )
    wait_deadline = time.monotonic() + 120
    while not smtp.mails():
        assert time.monotonic() < wait_deadline, "no expiry mail"
        time.sleep(0.5)
    time.sleep(5)  # every node has looked again (their expiry looks are a minute apart)
    assert [str(m["Subject"]) for _, m in smtp.mails()] == [
        "[certbroker] certificate 1 due-00.example.com expires in 2 day(s)"
    ]


BUDGET, WINDOW, REQUESTED = 10, 20, 25  # orders, seconds, certificates


def test_a_budget_of_ten_orders_keeps_the_rest_queued_on_every_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    """25 requests through three nodes with a budget of 10 new orders per 20 s: Pebble
    sees at most 10 in any 20 s, the other 15 wait in the queue (saying so) and go out as
    the window opens, and every certificate is issued from its one order."""
    set_it = cluster.cli("budget", "set", "main", "--orders-per-account", f"{BUDGET}/{WINDOW}s")
    assert f"new orders per account {BUDGET}/{WINDOW}s" in set_it.stdout
    key_file = tmp_path / "account.pem"
    cluster.cli("account", "export-key", "main", "--out", str(key_file))
    assert cluster.cli.pebble is not None
    peek = cluster.cli.pebble, cluster.account_uri, key_file
    orders_url = post_as_get(*peek, cluster.account_uri)["orders"]
    for n in range(3):
        cluster.start_node(n, tmp_path)
    cluster.wait_up()

    def valid() -> int:
        return int(cluster.sql("SELECT count(*) FROM certificates WHERE status = 'valid'")[0][0])

    first_seen: dict[str, float] = {}  # Pebble's orders, when this test first saw each
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda n: cluster.request(n, [0, 1, 2]), range(REQUESTED)))
    deadline = time.monotonic() + 6 * WINDOW + 60
    while valid() < REQUESTED or len(first_seen) < REQUESTED:
        for url in post_as_get(*peek, orders_url)["orders"]:
            first_seen.setdefault(url, time.monotonic())
        assert time.monotonic() < deadline, f"{valid()} of {REQUESTED} valid"
        time.sleep(0.3)

    # At most BUDGET orders reached the CA in any window (less the look's own delay).
    seen = sorted(first_seen.values())
    for i, start in enumerate(seen):
        assert sum(1 for t in seen[i:] if t < start + WINDOW - 3) <= BUDGET, seen
    # The other 15 waited in the queue, and said so, and none was refused or tried twice.
    waited = cluster.sql(
        "SELECT count(DISTINCT certificate_id) FROM events WHERE kind = 'held-back' "
        "AND message LIKE 'rate-limit budget: account ''main''%'"
    )[0][0]
    assert waited >= REQUESTED - BUDGET
    per_cert = cluster.sql("SELECT certificate_id, count(*), min(state) FROM orders "
                           "GROUP BY certificate_id")  # fmt: skip
    assert {(row[1], row[2]) for row in per_cert} == {(1, "valid")}
    assert (
        cluster.sql("SELECT count(*) FROM events WHERE kind IN ('failed', 'attempt-failed')")[0][0]
        == 0
    )
    assert len(first_seen) == REQUESTED
    # `budget show` tells what was used.
    shown = json.loads(cluster.cli("budget", "show", "--json").stdout)
    ours = next(ca for ca in shown["cas"] if ca["orders_per_account"] == f"{BUDGET}/{WINDOW}s")
    assert [s["name"] for s in ours["scopes"] if s["scope"].startswith("account:")] == ["main"]
