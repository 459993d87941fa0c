"""Gateway agents: `certbroker agent` on a gateway, load balancer or server,
connected to the broker as one of its clients. It says which certificates it wants
(`hello`), answers the HTTP-01 tokens of the names it is allowed at the edge, installs
what it is sent, and reports what it installed.

Two ways to hold the key, per certificate:
* `local` (the default): the agent makes the key and sends a CSR, exactly as a device
  does (services/devices.py), and renews with a fresh CSR when told to; the key never
  leaves the gateway.
* `broker`: the broker holds the key (Parallels RAS's way) and sends it with the
  certificate; one certificate may go to many gateways. An agent asking for names
  the broker has no such certificate for makes the broker request one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from certbroker.domain.agents import AGENT_LIVE, DRIFT_DAYS, KeyMode
from certbroker.domain.audit import SYSTEM, Actor, Outcome
from certbroker.domain.clients import (
    Client,
    DeviceRequest,
    Renewal,
    connection_refusal,
    delivery_refusal,
)
from certbroker.domain.errors import CertbrokerError, NotFoundError, UsageError
from certbroker.domain.models import Certificate, ChallengeType
from certbroker.domain.names import validate_names
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.services.devices import DeviceService
from certbroker.services.requests import CertificateRequest, RequestService

CHALLENGE = ChallengeType.AGENT_HTTP_01


@dataclass(frozen=True)
class Wanted:
    """One `[[certificate]]` of an agent's configuration, as its hello says it."""

    names: list[str]
    key: KeyMode = KeyMode.LOCAL


@dataclass(frozen=True)
class Changes:
    """What one look at the store found for the agents connected to this node."""

    tokens: list[tuple[str, str, str]]  # (token, key authorization, name), all out now
    issued: dict[int, set[int]]  # certificate newly issued -> the clients installing it
    cursor: int  # the last event looked at


class AgentService:
    def __init__(self, ctx: ServiceContext, requests: RequestService, devices: DeviceService):
        self.ctx = ctx
        self.repo = ctx.repo
        self.requests = requests
        self.devices = devices

    # -- an agent connects ----------------------------------------------------------------

    def hello(self, client: Client, wanted: Sequence[Wanted]) -> list[dict[str, Any]]:
        """For each certificate the agent wants, in order: the broker's certificate it
        installs (`certificate_id`), or `need_csr` (key local, none yet: send a CSR),
        or `error` (names it may not obtain, and why)."""
        now = self.ctx.clock()
        self.repo.touch_agents([client.id], now)
        answers: list[dict[str, Any]] = []
        for want in wanted:
            try:
                names = validate_names(want.names, CHALLENGE)
                refused = client.off_the_list(names)
                if refused:
                    raise UsageError(
                        f"client {client.name!r} may not obtain {', '.join(refused)}; its "
                        f"allow-list: {', '.join(client.allow) or 'empty'}"
                    )
                cert: Certificate | None
                if want.key is KeyMode.BROKER:
                    cert = self._broker_certificate(client, names)
                else:  # issued, else being obtained: a restart orders nothing again
                    cert = self.repo.certificate_to_renew(
                        client.id, names, CHALLENGE
                    ) or self.repo.certificate_to_renew(client.id, names, CHALLENGE, issued=False)
                if cert is None:
                    answers.append({"names": names, "key": want.key.value, "need_csr": True})
                    continue
                self.repo.subscribe(client.id, cert.id, want.key, now)
                answers.append({"names": names, "key": want.key.value, "certificate_id": cert.id})
            except CertbrokerError as exc:
                answers.append({"names": list(want.names), "key": want.key.value,
                                "error": str(exc)})  # fmt: skip
        return answers

    def _broker_certificate(self, client: Client, names: list[str]) -> Certificate:
        """The agents' certificate for these names, or a new one for `client` within its
        limits (one it may not have more of is the entry's error; nothing is ordered).
        Counted before it is stored, not in the same transaction as a CSR is: hellos of
        one client at the same moment may each make one past the cap (there are at
        most client_connections of them on each node)."""
        found = self.repo.broker_certificate_for(names)
        if found is not None:
            return found
        self.devices.limits.new_certificate(client, self.repo.client_load(client.id))
        account = None
        if client.account_id is not None:
            account = self.repo.get_account(client.account_id).name
        prepared = self.requests.prepare(
            CertificateRequest(names=names, account=account, challenge=CHALLENGE)
        )
        prepared = dataclasses.replace(prepared, client_id=client.id, label=client.name)
        cert, _order = self.requests.store(prepared)
        return cert

    def submit_csr(self, client: Client, csr: str) -> DeviceRequest:
        """A `local` certificate's CSR (a first one, or a fresh one to renew): handled as
        a device's, answered at the edge; the agent installs what comes of it."""
        request = self.devices.request_from_csr(client, csr, CHALLENGE, Renewal.DEVICE)
        if request.certificate_id is not None:
            self.repo.subscribe(client.id, request.certificate_id, KeyMode.LOCAL, self.ctx.clock())
        return request

    # -- what to send it ------------------------------------------------------------------

    def clients_now(self, ids: Sequence[int]) -> dict[int, Client]:
        """The clients with these ids as they are now (a deleted one is missing): what a
        connection's every delivery is checked against (`connection_refusal`), never what
        it authenticated as."""
        return self.repo.clients_by_id(ids)

    def deliveries(self, client: Client) -> list[dict[str, Any]]:
        """On connecting, or at a long poll: the certificates the agent installs whose
        current serial it has not installed, each with its chain, and its key when the
        broker holds it; only those the client, as it is now, may have."""
        current = self.clients_now([client.id]).get(client.id)
        if current is None or connection_refusal(client, current) is not None:
            return []
        client = current
        found = []
        for inst in self.repo.installations_of(client.id):
            try:
                cert = self.repo.get_certificate(inst.certificate_id)
            except NotFoundError:
                continue
            if cert.cert_pem is None or cert.serial == inst.serial:
                continue
            if not self._may_have(client, cert, inst.key_mode):
                continue
            message = _delivery(cert) | {"key_mode": inst.key_mode.value}
            if inst.key_mode is KeyMode.BROKER:
                sealed = self.repo.certificate_key_sealed(cert.id)
                if sealed is None:
                    continue
                _record_delivery(self.ctx, cert, client.id)  # before the key leaves
                message["key"] = self.ctx.sealer.unseal(sealed).decode()
            found.append(message)
        return found

    def deliveries_to(
        self, issued: dict[int, set[int]], connected: dict[int, Client]
    ) -> dict[int, list[dict[str, Any]]]:
        """For the hub: the newly issued certificates for each connected client that
        installs them and may have them (`connected`: the clients as they are now,
        `clients_now`, of connections that may still act), each certificate read (and
        its key unsealed) once, however many gateways it goes to."""
        found: dict[int, list[dict[str, Any]]] = {}
        for cert_id, clients in issued.items():
            if not clients & connected.keys():
                continue
            try:
                cert = self.repo.get_certificate(cert_id)
            except NotFoundError:
                continue
            if cert.cert_pem is None:
                continue
            base = _delivery(cert)
            key: str | None = None
            for inst in self.repo.installations_of_certificate(cert_id):
                client = connected.get(inst.client_id)
                if client is None or inst.serial == cert.serial:
                    continue
                if not self._may_have(client, cert, inst.key_mode, SYSTEM):
                    continue
                message = base | {"key_mode": inst.key_mode.value}
                if inst.key_mode is KeyMode.BROKER:
                    if key is None:
                        sealed = self.repo.certificate_key_sealed(cert.id)
                        if sealed is None:
                            continue
                        key = self.ctx.sealer.unseal(sealed).decode()
                    # The hub's loop acts for no client: the broker sends it (system).
                    _record_delivery(self.ctx, cert, inst.client_id, SYSTEM)
                    message["key"] = key
                found.setdefault(inst.client_id, []).append(message)
        return found

    def _may_have(
        self, client: Client, cert: Certificate, mode: KeyMode, actor: Actor | None = None
    ) -> bool:
        """Whether `cert` (with its key, for a broker-held one) may go to `client` as it is
        now; a refusal is an audit record, and nothing is sent."""
        why = delivery_refusal(
            client,
            cert.names,
            with_key=mode is KeyMode.BROKER,
            made_for_a_client=cert.client_id is not None,
            approved=lambda: (
                self.repo.approved_names(cert.id, client.id) if cert.client_id == client.id else ()
            ),
        )
        if why is None:
            return True
        audit.record(
            self.ctx,
            "certificate.delivery-refused",
            "certificate",
            cert.id,
            {"names": list(cert.names), "client": client.name, "reason": why},
            outcome=Outcome.REFUSED,
            actor=actor,
        )
        return False

    @staticmethod
    def tokens_for(client: Client, tokens: Sequence[tuple[str, str, str]]) -> dict[str, str]:
        """token -> key authorization, of the names the client may obtain."""
        return {
            token: key_auth
            for token, key_auth, name in tokens
            if not client.off_the_list([name.removeprefix("*.")])
        }

    def tokens_out(self) -> list[tuple[str, str, str]]:
        """Every agent-answered token out now: (token, key authorization, name)."""
        return self.repo.agent_challenges()

    def acknowledge(self, client: Client, tokens: Sequence[str]) -> None:
        self.repo.ack_challenges(client.id, tokens, self.ctx.clock())

    def report(
        self,
        client: Client,
        cert_id: int,
        *,
        serial: str,
        not_after: datetime | None,
        ok: bool,
        reload_status: int | None,
        output_tail: str,
        error: str | None,
    ) -> None:
        self.repo.report_installation(
            client,
            cert_id,
            serial=serial,
            not_after=not_after,
            ok=ok,
            reload_status=reload_status,
            output_tail=output_tail,
            error=error,
            now=self.ctx.clock(),
        )

    # -- for the connections of a node ----------------------------------------------------------

    def start_cursor(self) -> int:
        return self.repo.last_event_id()

    def changes(self, cursor: int) -> Changes:
        """One look for every agent connected to this node: the tokens out now, and the
        certificates issued since `cursor` with who installs them."""
        cert_ids, cursor = self.repo.issued_since(cursor)
        issued = self.repo.subscribers(cert_ids) if cert_ids else {}
        return Changes(self.repo.agent_challenges(), issued, cursor)

    def still_connected(self, client_ids: Sequence[int]) -> None:
        """The agents of these clients are connected to this node (once a minute)."""
        self.repo.touch_agents(client_ids, self.ctx.clock())

    def live(self) -> list[Client]:
        return self.repo.live_agents(self.ctx.clock() - AGENT_LIVE)

    def check_drift(self) -> int:
        """An alarm for every agent still serving a replaced serial when that one has
        DRIFT_DAYS or fewer left (its agent is gone, or keeps failing to install)."""
        now = self.ctx.clock()
        found = self.repo.drifting(now, timedelta(days=DRIFT_DAYS))
        names = {c.id: c.name for c in self.repo.list_clients()} if found else {}
        for client_id, cert_id, serial, current in found:
            self.repo.raise_drift(
                client_id,
                cert_id,
                f"drift: {names.get(client_id, client_id)} still serves serial {serial}, "
                f"which expires within {DRIFT_DAYS} days; the current one is {current}",
                now,
            )
        return len(found)

    def installations(self, client: Client) -> list[dict[str, Any]]:
        return [i.to_json() for i in self.repo.installations_of(client.id)]


def _delivery(cert: Certificate) -> dict[str, Any]:
    """A certificate as an agent is sent it (without the key)."""
    return {
        "type": "certificate",
        "certificate_id": cert.id,
        "names": list(cert.names),
        "serial": cert.serial,
        "not_before": cert.not_before.isoformat() if cert.not_before else None,
        "not_after": cert.not_after.isoformat() if cert.not_after else None,
        "chain": (cert.cert_pem or "") + (cert.chain_pem or ""),
    }


def _record_delivery(
    ctx: ServiceContext, cert: Certificate, client_id: int, actor: Actor | None = None
) -> None:
    """A broker-held private key sent to a client's agent: into the audit log."""
    audit.record(
        ctx,
        "certificate.deliver-key",
        "certificate",
        cert.id,
        {"names": list(cert.names), "serial": cert.serial, "client_id": client_id},
        actor=actor,
    )
