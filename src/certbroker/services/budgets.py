"""Rate-limit budgets: count what is sent to each CA, over every process and node, and
keep an order queued while a budget has no room (domain/budgets.py has the rules).

Budgets are per CA (its directory URL): Let's Encrypt's are built in, and a person's
settings (`certbroker budget set`, PUT /api/v1/budgets) are kept in the store, field by
field over the built-in ones, so every node uses the same.

What counts:
- new orders per account: every new order sent, whatever becomes of it (the CA counts
  requests); ARI renewals too, on the safe side;
- certificates per registered domain, over every account at that CA: each order that did
  not fail counts once for each registered domain among its names; a renewal (the same
  names again) counts but is never held back by it, as at Let's Encrypt.
A CA's rateLimited answer with a Retry-After holds what it names (the account, the
registered domains, or only this certificate) until then.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from certbroker.domain import budgets as rules
from certbroker.domain.budgets import CaBudgets
from certbroker.domain.errors import AcmeProblem, UsageError
from certbroker.domain.models import Account, Certificate, Order, OrderPurpose
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.store.budgets import Check, Held, ScopeUse

log = logging.getLogger("certbroker.budgets")

SETTING = "rate-budgets"


@dataclass(frozen=True)
class Wait:
    """An order that must wait: until when, and the sentence that says why."""

    until: datetime
    message: str


def account_scope(account: Account) -> str:
    return f"account:{account.id}"


def domain_scope(domain: str) -> str:
    return f"domain:{domain}"


class BudgetService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    # -- settings -----------------------------------------------------------------------------

    def _overrides(self) -> dict[str, dict[str, Any]]:
        stored = self.repo.get_setting(SETTING)
        return json.loads(stored) if stored else {}

    def for_ca(self, directory_url: str) -> CaBudgets:
        overrides = self._overrides().get(directory_url.rstrip("/"), {})
        return rules.effective(directory_url, overrides)

    def settings(self) -> list[dict[str, Any]]:
        """Every CA with a budget (built in, set, or in use by an account)."""
        return [{"ca": url, **found.to_json(), "set_here": here}
                for url, found, here in self._every_ca()]  # fmt: skip

    def _every_ca(self) -> list[tuple[str, CaBudgets, bool]]:
        """(directory URL, its budgets, set here) of every CA known, the settings read once."""
        overrides = self._overrides()
        urls = set(rules.BUILT_IN) | set(overrides)
        urls |= {a.directory_url.rstrip("/") for a in self.repo.list_accounts()}
        return [(url, rules.effective(url, overrides.get(url, {})), url in overrides)
                for url in sorted(urls)]  # fmt: skip

    def set(self, ca: str, changes: dict[str, str | None]) -> tuple[str, CaBudgets]:
        """Set budgets of one CA (its directory URL, or an account's name for its CA): a
        field's text ('10/30s', 'none'), or None to go back to the built-in one. Every
        value is checked before anything is stored."""
        url = ca.strip().rstrip("/")
        if not url.startswith(("https://", "http://")):
            account = next((a for a in self.repo.list_accounts() if a.name == ca), None)
            if account is None:
                raise UsageError(
                    f"{ca!r} is neither a CA's directory URL (https://…/directory) nor an "
                    "account's name; `certbroker account list` shows both"
                )
            url = account.directory_url.rstrip("/")
        if not changes:
            return url, self.for_ca(url)
        unknown = set(changes) - set(rules.FIELDS)
        if unknown:
            raise UsageError(
                f"unknown budget {sorted(unknown)[0]!r}: use {', '.join(rules.FIELDS)}"
            )
        for field, value in changes.items():
            if value is not None:
                rules.parse_budget(value, field.replace("_", "-"))
        overrides = self._overrides()
        mine = overrides.get(url, {})
        for field, value in changes.items():
            if value is None:
                mine.pop(field, None)
            else:
                mine[field] = value.strip()
        if mine:
            overrides[url] = mine
        else:
            overrides.pop(url, None)
        before = self.for_ca(url).to_json()
        self.repo.set_setting(SETTING, json.dumps(overrides, sort_keys=True), self.ctx.clock())
        after = self.for_ca(url)
        audit.record(self.ctx, "settings.budgets", "ca", url, audit.diff(before, after.to_json()))
        return url, after

    # -- before a new order -------------------------------------------------------------------

    def checks(self, account: Account, cert: Certificate, order: Order) -> list[Check]:
        budgets = self.for_ca(account.directory_url)
        renewal = order.purpose is OrderPurpose.RENEW
        found = [Check(account_scope(account), budgets.orders_per_account)]
        for domain in rules.registered_domains(cert.names):
            found.append(
                Check(domain_scope(domain), budgets.certificates_per_domain,
                      issued_only=True, exempt=renewal)
            )  # fmt: skip
        return found

    def spend(self, account: Account, cert: Certificate, order: Order) -> Wait | None:
        """Count one new order against the budgets it falls under, or say until when it
        must wait (nothing counted then)."""
        now = self.ctx.clock()
        ca = account.directory_url.rstrip("/")
        held = self.repo.spend_budget(ca, self.checks(account, cert, order), order.id, now)
        if held is None:
            return None
        return Wait(held.until, self._why(held, account, now))

    def _why(self, held: Held, account: Account, now: datetime) -> str:
        when = f"{held.until:%Y-%m-%d %H:%M:%S} UTC"
        ca = account.directory_url
        if held.budget is None:
            return (
                f"the CA ({ca}) said rateLimited for {self._scope_words(held.scope, account)}"
                f"{': ' + held.reason if held.reason else ''}; this order waits until {when}"
            )
        return (
            f"rate-limit budget: {self._scope_words(held.scope, account)} has had "
            f"{held.used} {'orders' if held.scope.startswith('account:') else 'certificates'} "
            f"at {ca} in the last {_span(held.budget.window)} (budget {held.budget}); this "
            f"order waits in the queue until {when} instead of being refused by the CA "
            "(`certbroker budget show`)"
        )

    @staticmethod
    def _scope_words(scope: str, account: Account) -> str:
        kind, _, value = scope.partition(":")
        if kind == "account":
            return f"account {account.name!r}"
        if kind == "domain":
            return f"registered domain {value}"
        return "this certificate"

    # -- what the CA said ---------------------------------------------------------------------

    def rate_limited(
        self, account: Account, cert: Certificate, problem: AcmeProblem, retry_after: float | None
    ) -> None:
        """The CA answered rateLimited with a Retry-After: hold what its problem names
        (the account's orders, the registered domains, or only this certificate, which
        its own retry already waits for) until then, on every node."""
        if not retry_after:
            return
        limit = rules.limit_named(problem.detail or "")
        if limit == "names":
            return
        now = self.ctx.clock()
        until = now + timedelta(seconds=retry_after)
        ca = account.directory_url.rstrip("/")
        if limit == "domain":
            scopes = [domain_scope(d) for d in rules.registered_domains(cert.names)]
        else:
            scopes = [account_scope(account)]
        reason = (problem.detail or "rateLimited")[:500]
        message = (
            f"the CA ({account.directory_url}) said rateLimited: "
            f"{', '.join(self._scope_words(s, account) for s in scopes)} waits until "
            f"{until:%Y-%m-%d %H:%M:%S} UTC on every node ({reason})"
        )
        self.repo.block_budget(ca, scopes, now, until, reason, message, cert.id)
        log.warning("%s rate-limited %s until %s", ca, scopes, until)

    # -- what is used -------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """Per CA: its budgets, the busiest scopes in their windows, and the CA's holds."""
        now = self.ctx.clock()
        names = {account_scope(a): a.name for a in self.repo.list_accounts()}
        out: list[dict[str, Any]] = []
        used: dict[timedelta, list[ScopeUse]] = {}  # per window, over every CA: read once
        for ca, budgets, here in self._every_ca():
            scopes = []
            for kind, budget in (
                ("account", budgets.orders_per_account),
                ("domain", budgets.certificates_per_domain),
            ):
                window = budget.window if budget else timedelta(days=7)
                if window not in used:
                    used[window] = self.repo.budget_use(now - window, now)
                for use in used[window]:
                    if use.ca != ca or not use.scope.startswith(kind + ":"):
                        continue
                    check = Check(use.scope, budget, issued_only=kind == "domain")
                    times = self.repo.budget_times(ca, check, now - window)
                    opens = rules.opens_at(times, now, budget) if budget else None
                    scopes.append(
                        {
                            "scope": use.scope,
                            "name": names.get(use.scope, use.scope.partition(":")[2]),
                            "used": len(times),
                            "budget": str(budget) if budget else None,
                            "full_until": opens.isoformat() if opens else None,
                        }
                    )
            out.append({"ca": ca, **budgets.to_json(), "set_here": here, "scopes": scopes[:50]})
        holds = [
            {"ca": b.ca, "scope": b.scope, "until": b.until.isoformat(), "reason": b.reason}
            for b in self.repo.budget_blocks_now(now)
        ]
        return {"cas": out, "ca_holds": holds}


def _span(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}" if count != 1 else unit.rstrip("s")
    return f"{seconds} s"
