"""What keeps `certbroker --help` fast (docs/benchmarks.md: under 0.3 s) while it looks as Typer
draws it, and what every command's help has in common.

* `LazyGroup`: the top-level commands are listed from a table of `Lazy` entries (a name,
  where the command lives, its one-line help); a command's module is imported, and its
  parameters read, only when that command is resolved: when it runs, or its own `--help`
  is asked for.
* Flags (options that take no value) are shown without a type (`plain_flags`).
* `import_rich_utils`: Typer's help renderer without the two modules it imports for
  what certbroker does not use.

What this leans on. Typer 0.26 vendored Click and no longer supports using Click directly
(its "Vendored Click" notes); `typer._click` is private. The supported hook for a group
of one's own is `typer.Typer(cls=...)`, which must be a subclass of `typer.core.TyperGroup`,
itself a Click group: `LazyGroup` is Click's documented pattern for lazy subcommands (a
group overriding `get_command`; `list_commands` is TyperGroup's, the order of `commands`),
plus `format_help` and `get_help_option`, public methods of the same classes. A loaded
command is built with `typer.main.get_group` on an app of its own, as `add_typer` or
`command()` would have built it. `typer._click` is imported for type annotations only.
Only `import_rich_utils` goes behind Typer's back, for speed; see there.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from typer import _click


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


def _plain_flag(param: object) -> None:
    """A flag's help shows no type: `--wait`, not `--wait <bool>`.

    Typer's Rich help prints a type for every option, a flag's too, where Click's own help
    and Typer's plain help print none (a flag takes no value). The help's own override of
    that column is the option's metavar (`typer.Option(metavar=...)`): empty, it is blank.
    """
    if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
        param.metavar = ""


def plain_flags(command: _click.Command, ctx: _click.Context) -> None:
    """`_plain_flag` for every option of `command` and of its subcommands, its help
    option (`-h/--help`) included. Click makes a command's help option when first asked,
    for a context, and keeps it: it is asked for here, in a context like the one the
    command runs in (`ctx`: the command's own, its parent's the parent context)."""
    for param in [*command.params, command.get_help_option(ctx)]:
        _plain_flag(param)
    subcommands: Mapping[str, _click.Command] = getattr(command, "commands", {})
    for name, sub in subcommands.items():
        plain_flags(sub, typer.Context(sub, parent=ctx, info_name=name, **sub.context_settings))


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
        # Stand-ins keep every name in `commands`, where Typer looks for "Did you mean"
        # and TyperGroup.list_commands for the order.
        unloaded: dict[str, _click.Command] = {n: _Unloaded(n, e) for n, e in self.lazy.items()}
        self.commands = unloaded | dict(self.commands)
        for param in self.params:
            _plain_flag(param)
        self._listing = False

    def get_help_option(self, ctx: _click.Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        _plain_flag(option)
        return option

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
            context = typer.Context(
                command, parent=ctx, info_name=cmd_name, **command.context_settings
            )
            plain_flags(command, context)
        return command


# typer.rich_utils imports, at its top, rich.markdown (with markdown-it and pygments) for
# help written in Markdown (rich_markup_mode="markdown"), and rich.traceback for pretty
# tracebacks (pretty_exceptions_enable=False turns them off): together a third of
# `certbroker --help` (about 50 ms of 160). Neither is used here, and Typer offers no
# supported way to leave them out: its help is drawn by that module or, with
# rich_markup_mode=None, by Click's plain formatter, which looks different. Hence the
# stand-ins below; should Typer change so that they no longer fit, `import_rich_utils`
# falls back to the ordinary import (tests/unit/test_cli_help.py checks both that they
# are left out and that Typer's Markdown help and tracebacks still work).
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
