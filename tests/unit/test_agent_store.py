"""What the broker keeps of its gateway agents (store/agents.py, services/agents.py): the
tokens an order waits for each live agent allowed the name to hold, what each agent
installed, and the drift alarm of an agent still on a replaced serial near its expiry."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from certbroker.config import Settings
from certbroker.crypto.sealing import Sealer, new_master_key
from certbroker.domain.agents import AGENT_LIVE, KeyMode, missing_acks
from certbroker.domain.audit import AuditQuery
from certbroker.domain.clients import Client, ClientPolicy, RequestState, connection_refusal
from certbroker.domain.renewal import RenewalPlan, RenewalReason
from certbroker.services.common import ServiceContext
from certbroker.store.repository import Repository
from certbroker.wiring import Broker
from tests.unit.conftest import LEASE, NOW, issued, new_certificate


def broker_at(repo: Repository, tmp_path: Path, at: datetime, **settings: Any) -> Broker:
    ctx = ServiceContext(
        repo=repo,
        sealer=Sealer(new_master_key()),
        ca_factory=None,  # type: ignore[arg-type]  # nothing here reaches a CA
        clock=lambda: at,
    )
    return Broker(settings=Settings(data_dir=tmp_path, **settings), repo=repo, ctx=ctx)


def test_an_order_waits_for_every_live_agent_allowed_the_name(
    repo: Repository, tmp_path: Path
) -> None:
    broker = broker_at(repo, tmp_path, NOW)
    one, _ = broker.clients.add("lb-1", ["*.shop.example.com"])
    two, _ = broker.clients.add("lb-2", ["*.shop.example.com"])
    other, _ = broker.clients.add("other", ["*.elsewhere.example.com"])
    repo.touch_agents([one.id, two.id, other.id], NOW)
    live = repo.live_agents(NOW - AGENT_LIVE)
    assert {a.name for a in live} == {"lb-1", "lb-2", "other"}
    names = ["www.shop.example.com"]
    assert missing_acks(names, live, {}) == ["www.shop.example.com (agent lb-1, lb-2)"]
    assert missing_acks(names, live, {"www.shop.example.com": {one.id}}) == [
        "www.shop.example.com (agent lb-2)"
    ]
    assert missing_acks(names, live, {"www.shop.example.com": {one.id, two.id}}) == []
    # An agent not seen for longer than AGENT_LIVE is not waited for; none at all: named.
    assert repo.live_agents(NOW + AGENT_LIVE + timedelta(seconds=1)) == []
    assert missing_acks(["x.nobody.example.com"], live, {}) == [
        "x.nobody.example.com (no connected agent may answer for it)"
    ]


def test_acks_are_kept_per_agent_and_for_known_tokens_only(
    repo: Repository, tmp_path: Path
) -> None:
    from certbroker.store.rows import put_challenges

    broker = broker_at(repo, tmp_path, NOW)
    client, _ = broker.clients.add("lb-1", ["*.shop.example.com"], policy=ClientPolicy.DENY)
    with repo.engine.begin() as conn:
        put_challenges(conn, None, [("tok-1", "tok-1.ka", "www.shop.example.com",
                                     "agent-http-01")], NOW)  # fmt: skip
    assert repo.agent_challenges() == [("tok-1", "tok-1.ka", "www.shop.example.com")]
    broker.agents.acknowledge(client, ["tok-1", "tok-unknown"])
    broker.agents.acknowledge(client, ["tok-1"])  # again: once
    assert repo.acks_of(["tok-1", "tok-unknown"]) == {"tok-1": {client.id}, "tok-unknown": set()}
    assert broker.agents.tokens_for(client, repo.agent_challenges()) == {"tok-1": "tok-1.ka"}
    stranger, _ = broker.clients.add("stranger", ["*.elsewhere.example.com"])
    assert broker.agents.tokens_for(stranger, repo.agent_challenges()) == {}
    repo.delete_challenge("tok-1")
    assert repo.sweep_acks() == 1


def test_an_agent_left_on_a_replaced_serial_near_its_expiry_raises_the_drift_alarm(
    repo: Repository, tmp_path: Path
) -> None:
    broker = broker_at(repo, tmp_path, NOW)
    client, _ = broker.clients.add("gw", ["a.example.com"])
    cert, order = repo.create_certificate(new_certificate(), NOW, "w", NOW + LEASE)
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued("01", days=10), NOW, plan)
    repo.subscribe(client.id, cert.id, KeyMode.BROKER, NOW)
    broker.agents.report(client, cert.id, serial="01", not_after=NOW + timedelta(days=10),
                         ok=True, reload_status=0, output_tail="", error=None)  # fmt: skip
    renewal = repo.add_renewal_order(cert.id, NOW, "w", NOW + LEASE)
    repo.store_issued(cert.id, renewal.id, "w", issued("02"), NOW, plan)

    assert broker.agents.check_drift() == 0  # 10 days left on 01: not yet
    later = broker_at(repo, tmp_path, NOW + timedelta(days=4))
    assert later.agents.check_drift() == 1
    (entry,) = later.agents.installations(client)
    assert entry["alarm_since"] is not None and entry["serial"] == "01"
    assert "gw still serves serial 01" in entry["error"] and "current one is 02" in entry["error"]
    assert later.agents.check_drift() == 0  # raised once
    kinds = [e.kind.value for e in repo.list_events(cert_id=cert.id)]
    assert kinds.count("install-failed") == 1
    # The agent installs the current serial: the alarm clears.
    later.agents.report(client, cert.id, serial="02", not_after=NOW + timedelta(days=90),
                        ok=True, reload_status=0, output_tail="", error=None)  # fmt: skip
    (entry,) = later.agents.installations(client)
    assert entry["alarm_since"] is None and entry["serial"] == "02"


def test_an_operators_certificate_is_never_handed_out_with_its_key(
    repo: Repository, tmp_path: Path
) -> None:
    from certbroker.services.agents import Wanted

    broker = broker_at(repo, tmp_path, NOW)
    client, _ = broker.clients.add("gw", ["*.shop.example.com"])
    mine, order = repo.create_certificate(new_certificate("www.shop.example.com"), NOW, "w",
                                          NOW + LEASE)  # fmt: skip
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(mine.id, order.id, "w", issued("0a"), NOW, plan)

    (answer,) = broker.agents.hello(client, [Wanted(["www.shop.example.com"], KeyMode.BROKER)])
    assert answer["certificate_id"] != mine.id  # one made for the agents instead
    made = repo.get_certificate(answer["certificate_id"])
    assert made.client_id == client.id and made.challenge.value == "agent-http-01"
    assert [i.certificate_id for i in repo.installations_of(client.id)] == [made.id]
    # A second gateway asking for the same names shares the agents' one.
    other, _ = broker.clients.add("gw-2", ["*.shop.example.com"])
    (again,) = broker.agents.hello(other, [Wanted(["www.shop.example.com"], KeyMode.BROKER)])
    assert again["certificate_id"] == made.id


def test_a_delivery_asks_the_client_as_it_is_now(repo: Repository, tmp_path: Path) -> None:
    """Issue 24, finding 2: a certificate and its broker-held key go to a client only while
    it is enabled, on the token it connected with, and allowed every name now. What the
    connection learned at its start decides nothing; a refusal is an audit record."""
    broker = broker_at(repo, tmp_path, NOW)
    connected, _ = broker.clients.add("gw", ["*.shop.example.com", "*.old.example.com"])
    request = dataclasses.replace(
        new_certificate("www.old.example.com", key_sealed=broker.ctx.sealer.seal(b"KEY")),
        client_id=connected.id,
    )
    cert, order = repo.create_certificate(request, NOW, "w", NOW + LEASE)
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, "w", issued("01"), NOW, plan)
    repo.subscribe(connected.id, cert.id, KeyMode.BROKER, NOW)
    agents = broker.agents

    def sent(client: Client) -> list[tuple[int, str | None]]:
        """What the greeting and a long poll send, and what the hub sends (to the client
        as the store has it now, while the connection may still act)."""
        now = agents.clients_now([client.id])
        acting = {i: c for i, c in now.items() if connection_refusal(client, c) is None}
        by_hub = agents.deliveries_to({cert.id: {client.id}}, acting)
        return [(m["certificate_id"], m.get("key")) for m in agents.deliveries(client)] + [
            (m["certificate_id"], m.get("key")) for m in by_hub.get(client.id, [])
        ]

    assert sent(connected) == [(cert.id, "KEY"), (cert.id, "KEY")]
    broker.clients.allow("gw", remove=["*.old.example.com"])
    assert sent(connected) == []  # the connection still holds the old allow-list
    query = AuditQuery(action="certificate.delivery-refused")
    refused = repo.audit_entries(query, 10, newest_first=False)
    assert len(refused) == 2 and "www.old.example.com" in str(refused[0].details)

    broker.clients.allow("gw", add=["*.old.example.com"])
    assert len(sent(connected)) == 2
    broker.clients.set_enabled("gw", False)
    assert sent(connected) == []
    broker.clients.set_enabled("gw", True)
    broker_at(repo, tmp_path, NOW + timedelta(seconds=1)).clients.rotate_token("gw")
    assert sent(connected) == []  # the connection's token is not the client's any more


def every_order(repo: Repository) -> list[int]:
    """The IDs of every order in the store: what `serve` would send to the CA."""
    return [o.id for c in repo.list_certificates(now=NOW) for o in repo.orders_of(c.id)]


def test_a_hello_creates_no_more_certificates_than_its_allow_list_allows(
    repo: Repository, tmp_path: Path
) -> None:
    """Issue 24, finding 6: one certificate per exact name on the allow-list, and
    client_zone_certificates more for its '*.zone' patterns; beyond that a hello's entry
    is answered with an error, the others are answered, and nothing is made or ordered."""
    from certbroker.services.agents import Wanted

    broker = broker_at(repo, tmp_path, NOW, client_zone_certificates=2)
    client, _ = broker.clients.add("gw", ["gw.example.com", "*.shop.example.com"])
    names = ["gw.example.com", "a.shop.example.com", "b.shop.example.com", "c.shop.example.com"]
    wanted = [Wanted([n], KeyMode.BROKER) for n in names]
    wanted.append(Wanted(["d.shop.example.com"], KeyMode.LOCAL))  # asks for a CSR: no row

    answers = broker.agents.hello(client, wanted)
    made = [a.get("certificate_id") for a in answers[:3]]
    assert all(made) and answers[4]["need_csr"] is True
    refused = answers[3]["error"]
    assert "may hold 3 certificates" in refused
    assert "1 for the exact names" in refused and "2 for its '*.zone' patterns" in refused
    assert "client_zone_certificates" in refused
    assert "CERTBROKER_CLIENT_ZONE_CERTIFICATES" in refused
    assert sorted(c.id for c in repo.client_certificates(client.id)) == sorted(made)
    assert len(every_order(repo)) == 3  # none for c.shop.example.com

    # The same hello again (the agent reconnects): the same certificates, none counted twice.
    again = broker.agents.hello(client, wanted)
    assert [a.get("certificate_id") for a in again[:3]] == made
    assert "may hold 3 certificates" in again[3]["error"]
    assert len(repo.client_certificates(client.id)) == 3 and len(every_order(repo)) == 3

    # Exact names only: one certificate per name, whichever names each one carries.
    exact, _ = broker.clients.add("lb", ["x.example.com", "y.example.com"])
    sets = [["x.example.com"], ["y.example.com"], ["x.example.com", "y.example.com"]]
    answers = broker.agents.hello(exact, [Wanted(s, KeyMode.BROKER) for s in sets])
    assert all(a.get("certificate_id") for a in answers[:2])
    assert "may hold 2 certificates" in answers[2]["error"]
    assert "has no '*.zone' pattern" in answers[2]["error"]
    assert len(repo.client_certificates(exact.id)) == 2

    # Orders under way count too (client_pending_requests): a new one waits for them.
    busy = broker_at(repo, tmp_path, NOW, client_pending_requests=1)
    client, _ = busy.clients.add("gw-busy", ["*.busy.example.com"])
    sets = [["a.busy.example.com"], ["b.busy.example.com"]]
    answers = busy.agents.hello(client, [Wanted(s, KeyMode.BROKER) for s in sets])
    assert answers[0].get("certificate_id")
    assert "1 certificate being obtained" in answers[1]["error"]
    assert "client_pending_requests" in answers[1]["error"]
    assert len(repo.client_certificates(client.id)) == 1


def test_a_certificate_an_admin_approved_reaches_the_agent_it_was_approved_for(
    repo: Repository, tmp_path: Path
) -> None:
    """A local-key agent's CSR for a name off its allow-list, let through by an admin
    (policy approve), is delivered to that agent: the approval is its authority for that
    certificate. Another client's agent, or a name the approval did not cover, is not."""
    from tests.unit.test_clients import csr

    broker = broker_at(repo, tmp_path, NOW)
    client, _ = broker.clients.add("gw", ["*.shop.example.com"], policy=ClientPolicy.APPROVE)
    waiting = broker.agents.submit_csr(client, csr(["legacy.example.org"]))
    assert waiting.state is RequestState.AWAITING_APPROVAL
    approved = broker.devices.approve(waiting.id, "admin")
    assert approved.certificate_id is not None
    cert = repo.get_certificate(approved.certificate_id)
    (order,) = repo.orders_of(cert.id)
    plan = RenewalPlan(NOW + timedelta(days=60), RenewalReason.LIFETIME)
    repo.store_issued(cert.id, order.id, order.lease_owner, issued("0a"), NOW, plan)
    repo.subscribe(client.id, cert.id, KeyMode.LOCAL, NOW)

    delivered = [m["certificate_id"] for m in broker.agents.deliveries(client)]
    assert delivered == [cert.id]
    by_hub = broker.agents.deliveries_to({cert.id: {client.id}}, {client.id: client})
    assert [m["certificate_id"] for m in by_hub[client.id]] == [cert.id]

    other, _ = broker.clients.add("gw-2", ["*.shop.example.com"])
    repo.subscribe(other.id, cert.id, KeyMode.LOCAL, NOW)
    assert broker.agents.deliveries(other) == []  # approved for gw, not for gw-2
