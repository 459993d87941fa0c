"""What every command shares: the effective settings and, on first use, the wired broker."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from rich.console import Console

    from certbroker.config import Settings
    from certbroker.wiring import Broker


class _LazyConsole:
    """A Rich console made on first use. Importing rich.console costs about 20 ms, and
    many commands never print through it (`cert list` writes its columns itself; --json
    uses print)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def _get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)


# Typed as the Console they stand in for.
console = cast("Console", _LazyConsole(highlight=False, soft_wrap=True))
console_err = cast("Console", _LazyConsole(stderr=True, highlight=False, soft_wrap=True))


def say(line: str, *, err: bool = False) -> None:
    """One line as it is (never read as markup), on standard output or, with `err`,
    standard error: what the commands that obtain certificates print, without loading
    Rich for it."""
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def started() -> None:
    """The process's long-lived objects are made: turn the garbage collector back on
    (cli/main.py `run` turns it off for the start-up), with what exists now frozen out
    of its reach.

    A CLI start-up makes hundreds of thousands of objects (modules, classes, SQLAlchemy's
    and Typer's tables) and no garbage worth collecting; the collections they triggered
    cost 40-60 ms of `cert list`, most of it one full collection. Frozen, those objects
    are no longer walked by later collections either (`serve`, a long `cert request
    --from`)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


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
            from certbroker.services.audit import act_as_cli
            from certbroker.wiring import build

            act_as_cli()  # what the audit log says of this process: `cli`, the OS user
            self._broker = build(self.settings)
            started()
        return self._broker


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def escape(text: object) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))
