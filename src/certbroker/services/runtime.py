"""Settings changed while the broker runs, kept in the store so every `serve` process
and node follows them: the log level of each component (`certbroker log-level`), and
the console's settings (renewal lead time, expiry mail recipients, the console's own
HTTPS certificate)."""

from __future__ import annotations

import json
from typing import Any

from certbroker.domain.errors import UsageError
from certbroker.logs import COMPONENTS, LEVELS, RUNTIME_KEY, format_levels, parse_levels
from certbroker.services import audit
from certbroker.services.common import ServiceContext, validate_emails

BROKER_SETTINGS = "broker-settings"
_UNSET = object()


class RuntimeSettings:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def stored_log_levels(self) -> str | None:
        """The stored levels as text (what `LevelWatcher` polls), None when none are set."""
        return self.repo.get_setting(RUNTIME_KEY)

    def log_levels(self) -> dict[str, str]:
        """The levels changed at runtime, by component."""
        return parse_levels(self.stored_log_levels() or "", "stored log levels")

    def set_log_level(self, component: str, level: str | None) -> dict[str, str]:
        """Set `component`'s level (None: back to the configured one) for every process
        on the store; returns the levels changed at runtime."""
        name = component.lower()
        if name not in COMPONENTS:
            raise UsageError(
                f"unknown component {component!r}: choose one of {', '.join(COMPONENTS)}"
            )
        if level is not None and level.lower() not in LEVELS:
            raise UsageError(f"unknown level {level!r}: choose one of {', '.join(LEVELS)}")
        runtime = self.log_levels()
        before = runtime.get(name)
        if level is None:
            runtime.pop(name, None)
        else:
            runtime[name] = level.lower()
        self.repo.set_setting(RUNTIME_KEY, format_levels(runtime), self.ctx.clock())
        audit.record(self.ctx, "settings.log-level", "log-level", name, {name: [before, level]})
        return runtime

    # -- the console's settings ----------------------------------------------------------

    def broker_settings(self) -> dict[str, Any]:
        """`renew_before_days` (None: the configured policy), `notify_to` (expiry mail
        recipients, used by notifications), `console_certificate_id` (HTTPS)."""
        stored = json.loads(self.repo.get_setting(BROKER_SETTINGS) or "{}")
        return {
            "renew_before_days": stored.get("renew_before_days"),
            "notify_to": list(stored.get("notify_to", [])),
            "console_certificate_id": stored.get("console_certificate_id"),
        }

    def stored_renew_before_days(self) -> float | None:
        value = self.broker_settings()["renew_before_days"]
        return None if value is None else float(value)

    def update_broker_settings(
        self,
        *,
        renew_before_days: Any = _UNSET,
        notify_to: Any = _UNSET,
        console_certificate_id: Any = _UNSET,
    ) -> dict[str, Any]:
        """Change the settings given (None clears one); each is checked first."""
        current = self.broker_settings()
        before = dict(current)  # for the audit log's diff
        if renew_before_days is not _UNSET:
            if renew_before_days is not None and not 0 < float(renew_before_days) < 10_000:
                raise UsageError("renew_before_days: a number of days above 0, or null")
            current["renew_before_days"] = renew_before_days
        if notify_to is not _UNSET:
            current["notify_to"] = validate_emails(list(notify_to or []))
        if console_certificate_id is not _UNSET:
            if console_certificate_id is not None:
                cert = self.repo.get_certificate(int(console_certificate_id))
                if cert.cert_pem is None:
                    raise UsageError(
                        f"console_certificate_id: certificate {cert.id} has not been issued yet"
                    )
                if self.repo.certificate_key_sealed(cert.id) is None:
                    raise UsageError(
                        f"console_certificate_id: certbroker holds no key for certificate "
                        f"{cert.id} (a device keeps it), so it cannot serve it"
                    )
            current["console_certificate_id"] = console_certificate_id
        self.repo.set_setting(BROKER_SETTINGS, json.dumps(current), self.ctx.clock())
        audit.record(self.ctx, "settings.update", "settings", "broker", audit.diff(before, current))
        return current
