"""Settings changed while the broker runs, kept in the store so every `serve` process
and node follows them: today the log level of each component (`certbroker log-level`)."""

from __future__ import annotations

from certbroker.domain.errors import UsageError
from certbroker.logs import COMPONENTS, LEVELS, RUNTIME_KEY, format_levels, parse_levels
from certbroker.services.common import ServiceContext


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
        if level is None:
            runtime.pop(name, None)
        else:
            runtime[name] = level.lower()
        self.repo.set_setting(RUNTIME_KEY, format_levels(runtime), self.ctx.clock())
        return runtime
