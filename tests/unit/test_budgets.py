"""Rate-limit budgets: the rules (domain/budgets.py), and orders held in the queue by them
on a real SQLite store with a scripted CA, as `serve`'s workers run them. The end-to-end
test at Pebble (25 requests, a budget of 10) is tests/integration/test_budgets.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from certbroker.domain import budgets as rules
from certbroker.domain.audit import AuditQuery
from certbroker.domain.budgets import Budget
from certbroker.domain.errors import AcmeProblem, TransientError, UsageError
from certbroker.domain.models import OrderState
from certbroker.services.issuance import Outcome
from certbroker.services.leases import make_owner
from certbroker.store.schema import budget_spends, orders
from certbroker.wiring import Broker
from tests.support.scripted_ca import ScriptedCA, validation_problem
from tests.unit.test_order_state_machine import build, request

CA_URL = "https://ca.test/acme/directory"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_a_budget_is_read_and_written_as_count_per_window() -> None:
    assert rules.parse_budget("300/3h") == Budget(300, timedelta(hours=3))
    assert rules.parse_budget("10 per 30s") == Budget(10, timedelta(seconds=30))
    assert rules.parse_budget("50/7d") == Budget(50, timedelta(days=7))
    assert rules.parse_budget("none") is None
    assert [str(rules.parse_budget(t)) for t in ("300/3h", "50/7d", "10/30s", "5/1w", "2/90m")] == [
        "300/3h", "50/7d", "10/30s", "5/7d", "2/90m"
    ]  # fmt: skip
    for bad in ("x", "0/1h", "10/0h", "10/3y", "-1/1h", "10/400d"):
        with pytest.raises(UsageError, match="budget"):
            rules.parse_budget(bad)


def test_one_more_fits_until_the_window_holds_limit_of_them() -> None:
    budget = Budget(3, timedelta(minutes=10))
    times = [NOW - timedelta(minutes=m) for m in (9, 5, 1)]
    assert rules.opens_at(times[1:], NOW, budget) is None
    assert rules.opens_at(times, NOW, budget) == NOW + timedelta(minutes=1)
    older = [NOW - timedelta(minutes=11), *times[1:]]  # out of the window: not counted
    assert rules.opens_at(older, NOW, budget) is None


def test_registered_domains_come_from_the_public_suffix_list() -> None:
    assert rules.registered_domain("www.example.com") == "example.com"
    assert rules.registered_domain("new.blog.example.co.uk") == "example.co.uk"
    assert rules.registered_domain("*.shop.example.org") == "example.org"
    assert rules.registered_domain("someone.github.io") == "someone.github.io"
    assert rules.registered_domain("a.b.pebble.test") == "pebble.test"  # no known suffix
    assert rules.registered_domains(["a.example.com", "b.example.com", "c.example.net"]) == [
        "example.com", "example.net"
    ]  # fmt: skip


def test_the_cas_rate_limit_problem_says_which_limit() -> None:
    domain = 'too many certificates (50) already issued for "example.com" in the last 168h0m0s'
    assert rules.limit_named(domain) == "domain"
    names = "too many certificates (5) already issued for this exact set of identifiers"
    assert rules.limit_named(names) == "names"
    assert rules.limit_named("too many new orders (300) recently") == "account"
    assert rules.limit_named("") == "account"


def test_lets_encrypt_budgets_are_built_in_and_settings_win_field_by_field(
    tmp_path: Path,
) -> None:
    broker = build(tmp_path, ScriptedCA())
    le = broker.issuance.budgets.for_ca(rules.LETS_ENCRYPT)
    assert (str(le.orders_per_account), str(le.certificates_per_domain)) == ("300/3h", "50/7d")
    assert broker.issuance.budgets.for_ca(CA_URL) == rules.CaBudgets()  # unknown: none

    _, changed = broker.issuance.budgets.set(rules.LETS_ENCRYPT, {"orders_per_account": "100/3h"})
    assert (str(changed.orders_per_account), str(changed.certificates_per_domain)) == (
        "100/3h", "50/7d"
    )  # fmt: skip
    for bad, words in (
        ({"orders_per_account": "lots"}, "not a budget"),
        ({"certificates_per_domain": "1/1h", "orders_per_account": "0/1h"}, "not a budget"),
        ({"orders_a_day": "1/1d"}, "unknown budget"),
    ):
        with pytest.raises(UsageError, match=words):
            broker.issuance.budgets.set(rules.LETS_ENCRYPT, bad)
    with pytest.raises(UsageError, match="neither a CA's directory URL"):
        broker.issuance.budgets.set("letsencrypt", {"orders_per_account": "1/1h"})
    assert broker.issuance.budgets.set("main", {})[0] == CA_URL  # an account names its CA
    # Nothing of a refused change was kept; None goes back to the built-in one.
    kept = broker.issuance.budgets.for_ca(rules.LETS_ENCRYPT)
    assert str(kept.orders_per_account) == "100/3h" and str(kept.certificates_per_domain) == "50/7d"
    _, back = broker.issuance.budgets.set(rules.LETS_ENCRYPT, {"orders_per_account": None})
    assert str(back.orders_per_account) == "300/3h"
    # Who changed a budget, and from what to what, is in the audit log.
    changes = broker.repo.audit_entries(AuditQuery(action="settings.budgets"), 10,
                                        newest_first=False)  # fmt: skip
    assert [e.details for e in changes if e.details] == [
        {"orders_per_account": ["300/3h", "100/3h"]},
        {"orders_per_account": ["100/3h", "300/3h"]},
    ]


def run(broker: Broker, names: list[str], **options: Any) -> tuple[int, Outcome, str]:
    owner = make_owner("test")
    cert, order = request(broker, owner, names, **options)
    result = broker.issuance.run(order.id, owner)
    return cert.id, result.outcome, result.message


def time_passes(broker: Broker, by: timedelta) -> None:
    """Moves every recorded order, and every queued order's turn, back in time: the window
    passing, without waiting."""
    with broker.repo.engine.begin() as conn:
        for row in conn.execute(select(budget_spends.c.id, budget_spends.c.at)).all():
            conn.execute(
                update(budget_spends).where(budget_spends.c.id == row.id).values(at=row.at - by)
            )
        for row in conn.execute(select(orders.c.id, orders.c.next_run_at)).all():
            if row.next_run_at is not None:
                moved = update(orders).where(orders.c.id == row.id)
                conn.execute(moved.values(next_run_at=row.next_run_at - by))


def next_due(broker: Broker) -> Outcome | None:
    """What a worker of `serve` does: claim the next due order and run it."""
    owner = make_owner("worker")
    claimed = broker.issuance.leases.claim_next(owner)
    if claimed is None:
        return None
    return broker.issuance.run(claimed, owner).outcome


def test_orders_past_the_account_budget_wait_in_the_queue_and_go_when_the_window_opens(
    tmp_path: Path,
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    broker.issuance.budgets.set(CA_URL, {"orders_per_account": "2/1h"})
    first = run(broker, ["a.example.com"])
    second = run(broker, ["b.example.net"])
    third_id, outcome, message = run(broker, ["c.example.org"])
    assert [first[1], second[1], outcome] == [Outcome.ISSUED, Outcome.ISSUED, Outcome.RETRY]
    assert len(ca.called("new_order")) == 2  # the third was never sent
    assert "rate-limit budget: account 'main' has had 2 orders" in message
    assert "budget 2/1h" in message and "waits in the queue until" in message

    shown = broker.certificates.details(third_id)
    waiting = shown["attempts"][-1]
    assert waiting["state"] == OrderState.QUEUED.value and "rate-limit budget" in waiting["error"]
    until = datetime.fromisoformat(waiting["next_run_at"])
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)
    assert any(e["kind"] == "held-back" and "budget" in e["message"] for e in shown["events"])
    assert shown["status"] != "failed" and shown["alarm"] is None  # waiting is no failure

    assert next_due(broker) is None  # not before its time
    # The hour has passed: the queued order goes out, and is counted in its turn.
    time_passes(broker, timedelta(hours=1))
    assert next_due(broker) is Outcome.ISSUED
    assert len(ca.called("new_order")) == 3
    assert run(broker, ["d.example.org"])[1] is Outcome.ISSUED
    assert run(broker, ["e.example.org"])[1] is Outcome.RETRY
    assert len(ca.called("new_order")) == 4


def test_the_domain_budget_counts_certificates_over_accounts_not_failures_nor_renewals(
    tmp_path: Path,
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    broker.issuance.budgets.set(CA_URL, {"certificates_per_domain": "1/7d"})
    # An order that fails validation is no certificate: it does not use the budget.
    ca.next_orders.append({"failing": {"x.example.com": validation_problem()}})
    assert run(broker, ["x.example.com"])[1] is Outcome.FAILED
    issued_id, outcome, _ = run(broker, ["www.example.com", "example.com"])
    assert outcome is Outcome.ISSUED
    _, outcome, message = run(broker, ["shop.example.com"])
    assert outcome is Outcome.RETRY
    assert "registered domain example.com has had 1 certificates" in message
    assert run(broker, ["shop.example.net"])[1] is Outcome.ISSUED  # another domain
    # A renewal of the same names is never held back by it (Let's Encrypt's exemption).
    owner = make_owner("test")
    renewal = broker.renewal.renew(issued_id, owner)
    assert broker.issuance.run(renewal.id, owner).outcome is Outcome.ISSUED


def test_a_rate_limited_answer_holds_every_order_of_the_account_until_its_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ScriptedCA()
    broker = build(tmp_path, ca)
    limited = AcmeProblem(
        "urn:ietf:params:acme:error:rateLimited", "too many new orders (300) recently", 429
    )
    real_new_order = ca.new_order
    refusals = []

    def new_order(names: Any, **kw: Any) -> Any:
        if not refusals:
            refusals.append(names)
            raise TransientError("the CA is rate-limiting", limited, retry_after=600.0)
        return real_new_order(names, **kw)

    monkeypatch.setattr(ca, "new_order", new_order)
    assert run(broker, ["one.example.com"])[1] is Outcome.RETRY
    # Another certificate of the same account is not sent while the CA said to wait.
    other_id, outcome, message = run(broker, ["two.example.org"])
    assert outcome is Outcome.RETRY and len(refusals) == 1
    assert "said rateLimited for account 'main'" in message
    assert "too many new orders" in message
    events = broker.certificates.details(other_id)["events"]
    assert any(e["kind"] == "held-back" for e in events)
