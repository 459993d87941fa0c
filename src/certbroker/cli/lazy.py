"""What keeps `certbroker --help` fast (issue 5: under 0.3 s) while it looks as Typer
draws it.

* `LazyGroup`: the top-level commands are listed from a table of `Lazy` entries (a name,
  where the command lives, its one-line help); a command's module is imported, and its
  parameters read, only when that command is resolved: when it runs, or its own `--help`
  is asked for.
* `import_rich_utils`: Typer's help renderer without the two modules it imports for
  what certbroker does not use.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup


@dataclass(frozen=True)
class Lazy:
    """`target` is `module:attribute`, a Typer app (a command group) or a command
    function; `help` is the first paragraph of its help, as the parent's listing shows
    it (tests/unit/test_cli_help.py holds it to the command's own)."""

    target: str
    help: str

    def load(self, name: str, parent: TyperGroup) -> _click.Command:
        """The command as `add_typer(app, name=name)` or `command(name)(function)` on the
        parent's Typer app would have built it."""
        module, _, attribute = self.target.partition(":")
        obj = getattr(importlib.import_module(module), attribute)
        holder = typer.Typer(
            rich_markup_mode=parent.rich_markup_mode, suggest_commands=parent.suggest_commands
        )
        if isinstance(obj, typer.Typer):
            holder.add_typer(obj, name=name)
        else:
            holder.command(name)(obj)
        return typer.main.get_group(holder).commands[name]


class _Unloaded(TyperCommand):
    """Stands in for a lazy command in its parent's listing: a name and a help line."""

    def __init__(self, name: str, lazy: Lazy) -> None:
        super().__init__(name=name, help=lazy.help)
        self.lazy = lazy


class LazyGroup(TyperGroup):
    """A Typer group (`typer.Typer(cls=...)`, subclassed to set `lazy`) that lists its
    `lazy` commands first, in the table's order, then any registered the usual way."""

    lazy: ClassVar[Mapping[str, Lazy]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        # Stand-ins keep every name in `commands`, where Typer looks for "Did you mean".
        unloaded: dict[str, _click.Command] = {n: _Unloaded(n, e) for n, e in self.lazy.items()}
        self.commands = unloaded | dict(self.commands)
        self._listing = False

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        if self.rich_markup_mode is not None:
            import_rich_utils()
        self._listing = True  # the listing needs the names and help lines only
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        command = self.commands.get(cmd_name)
        if isinstance(command, _Unloaded) and not self._listing:
            command = self.commands[cmd_name] = command.lazy.load(cmd_name, self)
        return command


# typer.rich_utils imports, at its top, rich.markdown (with markdown-it and pygments) for
# help written in Markdown (rich_markup_mode="markdown"), and rich.traceback for pretty
# tracebacks (pretty_exceptions_enable=False turns them off): together a third of
# `certbroker --help`. Neither is used here.
_DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class _Deferred(type):
    """The metaclass of a stand-in for a class of `_DEFERRED`: calling the stand-in, or
    reading an attribute such as `Traceback.from_exception`, imports the real class and
    uses it, so Typer works as before if it ever needs one."""

    _target: tuple[str, str]

    def _real(cls) -> Any:
        module, name = cls._target
        return getattr(importlib.import_module(module), name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls._real(), name)


def import_rich_utils() -> None:
    """Imports typer.rich_utils with stand-ins for `_DEFERRED`: while it is imported,
    each of those modules is one that holds only its stand-in; they are gone from
    sys.modules afterwards, so a later import gets the real module. A Typer that imports
    anything else from them gets the ordinary import."""
    if "typer.rich_utils" in sys.modules or not _DEFERRED.keys().isdisjoint(sys.modules):
        return
    for module, name in _DEFERRED.items():
        stub = types.ModuleType(module, "stand-in while typer.rich_utils is imported")
        setattr(stub, name, _Deferred(name, (), {"_target": (module, name)}))
        sys.modules[module] = stub
    try:
        importlib.import_module("typer.rich_utils")
    except (ImportError, AttributeError):
        pass  # imported again below, the ordinary way
    finally:
        for module in _DEFERRED:
            del sys.modules[module]
    importlib.import_module("typer.rich_utils")
