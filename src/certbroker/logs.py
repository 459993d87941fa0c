"""Logging by component (tracing), set in the configuration and, while
`serve` runs, changed at runtime through the store (`certbroker log-level`), so every
process and node on the store follows.

Components and their loggers:

* acme: certbroker's ACME client, and at debug the `acme` library's HTTP exchange
  (requests and responses: public keys, signatures, CSRs; never a private key);
* challenges: the HTTP-01 responder;
* scheduler: due renewals;
* workers: the worker pools and the issuance state machine;
* api, deploy: reserved for the REST API and deployment, as they arrive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from certbroker.domain.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error")
COMPONENTS: dict[str, tuple[str, ...]] = {
    "acme": ("certbroker.acme",),
    "challenges": ("certbroker.challenges",),
    "scheduler": ("certbroker.scheduler",),
    "workers": ("certbroker.workers", "certbroker.issuance"),
    "api": ("certbroker.api",),
    "deploy": ("certbroker.deploy",),
}
# Third-party loggers that belong to a component but only speak at its debug level.
_THIRD_PARTY = {"acme": ("acme", "urllib3")}
RUNTIME_KEY = "log_levels"


def parse_levels(text: str, source: str = "log_levels") -> dict[str, str]:
    """ "acme=debug, scheduler=warning" -> {"acme": "debug", "scheduler": "warning"}."""
    levels: dict[str, str] = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        component, sep, level = (p.strip().lower() for p in part.partition("="))
        if not sep or component not in COMPONENTS or level not in LEVELS:
            raise ConfigError(
                f"{source}: {part.strip()!r} must be COMPONENT=LEVEL with a component among "
                f"{', '.join(COMPONENTS)} and a level among {', '.join(LEVELS)}"
            )
        levels[component] = level
    return levels


def format_levels(levels: dict[str, str]) -> str:
    return ",".join(f"{c}={levels[c]}" for c in COMPONENTS if c in levels)


def effective(default: str, levels: dict[str, str]) -> dict[str, str]:
    return {c: levels.get(c, default) for c in COMPONENTS}


def setup_logging(default: str, levels: dict[str, str] | None = None) -> None:
    logging.basicConfig(
        level=logging.DEBUG,  # the loggers below decide; the root lets everything through
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().setLevel(getattr(logging, default.upper()))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    apply_levels(default, levels or {})


def apply_levels(default: str, levels: dict[str, str]) -> None:
    for component, level in effective(default, levels).items():
        value = getattr(logging, level.upper())
        for name in COMPONENTS[component]:
            logging.getLogger(name).setLevel(value)
        for name in _THIRD_PARTY.get(component, ()):
            logging.getLogger(name).setLevel(value if level == "debug" else logging.WARNING)


class LevelWatcher:
    """Applies the runtime levels stored by `certbroker log-level` as they change."""

    def __init__(
        self,
        default: str,
        configured: dict[str, str],
        read: Callable[[], str | None],
        interval: float = 2.0,
    ) -> None:
        self.default = default
        self.configured = configured
        self.read = read
        self.interval = interval
        self._seen: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        stored = self.read() or ""
        if stored == self._seen:
            return
        first, self._seen = self._seen is None, stored
        try:
            runtime = parse_levels(stored, "stored log levels")
        except ConfigError as exc:
            logging.getLogger("certbroker").warning("ignoring %s", exc)
            return
        apply_levels(self.default, {**self.configured, **runtime})
        if runtime or not first:
            logging.getLogger("certbroker").info(
                "log levels now: %s", format_levels(runtime) or "as configured"
            )

    def start(self) -> LevelWatcher:
        self.check()
        self._thread = threading.Thread(target=self._run, name="log-levels", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the store may be busy or briefly gone; try again
                logging.getLogger("certbroker").debug("reading log levels failed", exc_info=True)
