"""Gateway agents: a client's program on a gateway, load balancer or server
that answers HTTP-01 at the edge and installs the certificates it is given.

Pure: which live agents must hold a token before the CA is told to validate, and
whether a delivery would take an agent backwards."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from certbroker.domain.clients import Client
from certbroker.domain.errors import UsageError

AGENT_LIVE = timedelta(seconds=150)  # an agent seen this recently is taken as connected
DRIFT_DAYS = 7  # an old serial still installed when the old one has this many days left


class KeyMode(StrEnum):
    LOCAL = "local"  # the agent makes the key and sends a CSR: the key never leaves it
    BROKER = "broker"  # the broker holds the key and sends it (Parallels RAS's way)

    @classmethod
    def parse(cls, text: str) -> KeyMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(f"key {text!r}: choose local or broker") from None


def agents_for(name: str, agents: Iterable[Client]) -> list[Client]:
    """The agents allowed `name`: where the CA may reach for its token."""
    return [a for a in agents if a.enabled and not a.off_the_list([name])]


def missing_acks(
    identifiers: Sequence[str], agents: Sequence[Client], acked: dict[str, set[int]]
) -> list[str]:
    """What keeps an agent-answered order from being answered: per name (identifier,
    with its tokens' acks in `acked` by identifier), the live agents allowed it that
    do not hold its token yet; a name no live agent is allowed is missing too."""
    missing = []
    for name in identifiers:
        allowed = agents_for(name.removeprefix("*."), agents)
        if not allowed:
            missing.append(f"{name} (no connected agent may answer for it)")
            continue
        waiting = [a.name for a in allowed if a.id not in acked.get(name, set())]
        if waiting:
            missing.append(f"{name} (agent {', '.join(waiting)})")
    return missing


@dataclass(frozen=True)
class Installation:
    """What a client's agent installed of one certificate."""

    client_id: int
    certificate_id: int
    key_mode: KeyMode
    serial: str | None = None
    not_after: datetime | None = None
    installed_at: datetime | None = None
    reload_status: int | None = None
    output_tail: str | None = None
    error: str | None = None
    alarm_since: datetime | None = None
    reported_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "client_id": self.client_id,
            "certificate_id": self.certificate_id,
            "key": self.key_mode.value,
            "serial": self.serial,
            "not_after": iso(self.not_after),
            "installed_at": iso(self.installed_at),
            "reload_status": self.reload_status,
            "output_tail": self.output_tail,
            "error": self.error,
            "alarm_since": iso(self.alarm_since),
        }

    def drifting(self, current_serial: str | None, now: datetime) -> bool:
        """Still on a replaced serial while that one has DRIFT_DAYS or fewer left."""
        return (
            self.serial is not None
            and current_serial is not None
            and self.serial != current_serial
            and self.not_after is not None
            and self.not_after - now <= timedelta(days=DRIFT_DAYS)
        )
