"""What every command shares: the effective settings and, on first use, the wired broker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from certbroker.config import Settings
    from certbroker.wiring import Broker

console = Console(highlight=False, soft_wrap=True)
console_err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class State:
    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _broker: Broker | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from certbroker.config import load_settings
            from certbroker.logs import parse_levels, setup_logging

            self._settings = load_settings(self.config_file, overrides=self.overrides)
            setup_logging(self._settings.log_level, parse_levels(self._settings.log_levels))
        return self._settings

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            from certbroker.wiring import build

            self._broker = build(self.settings)
        return self._broker


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def escape(text: object) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))
