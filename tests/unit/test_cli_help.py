"""`certbroker --help` lists every command with its help line, in the order a user meets
them, without importing the commands (cli/lazy.py); no help shows a type for a flag; the
commands, their help and the usage errors are as before."""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import typer
from typer.core import TyperOption
from typer.testing import CliRunner

from certbroker.cli.main import Commands, app

if TYPE_CHECKING:
    from typer import _click

TOP_LEVEL = [
    "serve",
    "account",
    "cert",
    "budget",
    "dns",
    "events",
    "alarms",
    "notify",
    "audit",
    "client",
    "approvals",
    "target",
    "deploy",
    "webhook",
    "agent",
    "user",
    "token",
    "config",
    "db",
    "backup",
    "restore",
    "rotate-master-key",
    "log-level",
]
COMMAND_MODULES = [
    "certbroker.cli.access_cmd",
    "certbroker.cli.agent_cmd",
    "certbroker.cli.accounts",
    "certbroker.cli.audit_cmd",
    "certbroker.cli.budgets_cmd",
    "certbroker.cli.clients_cmd",
    "certbroker.cli.certs",
    "certbroker.cli.config_cmd",
    "certbroker.cli.db_cmd",
    "certbroker.cli.dns_cmd",
    "certbroker.cli.events_cmd",
    "certbroker.cli.log_level",
    "certbroker.cli.targets_cmd",
    "certbroker.cli.webhooks_cmd",
    "certbroker.cli.serve",
]


def certbroker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    env |= {"CERTBROKER_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "certbroker", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flat(text: str) -> str:
    """Help text without the box borders, and every run of white space one space."""
    return " ".join(text.replace("│", " ").split())


def root() -> tuple[typer.core.TyperGroup, typer.Context]:
    group = typer.main.get_command(app)
    assert isinstance(group, Commands)
    return group, typer.Context(group, info_name="certbroker")


def real_commands() -> dict[str, _click.Command]:
    """The top-level commands themselves, imported and built."""
    group, ctx = root()
    found = {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


def help_line(command: _click.Command) -> str:
    """The first paragraph of a command's help, which its parent's listing shows."""
    return inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0].strip()


def test_the_table_has_each_commands_own_help_line() -> None:
    commands = real_commands()
    assert list(commands) == TOP_LEVEL
    for name, command in commands.items():
        assert Commands.lazy[name].help == help_line(command), (
            f"the help line of {name!r} in Commands.lazy (cli/main.py) is not its own"
        )


def test_listing_looks_as_with_the_commands_loaded() -> None:
    def rendered(load: bool) -> str:
        group, ctx = root()
        if load:
            for name in group.list_commands(ctx):
                group.get_command(ctx, name)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            text = group.get_help(ctx)
        return out.getvalue() + text

    assert rendered(load=False) == rendered(load=True)


def test_help_lists_every_command_with_its_help_line(tmp_path: Path) -> None:
    proc = certbroker(tmp_path, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    shown = flat(proc.stdout)
    assert "Usage: python -m certbroker [OPTIONS] COMMAND [ARGS]..." in shown
    for name, command in real_commands().items():
        assert f"│ {name} " in proc.stdout
        assert f" {name} {flat(help_line(command))} " in shown
    for option in ("--config", "--data-dir", "--log-level", "--version", "--help"):
        assert option in shown
    assert certbroker(tmp_path, "-h").stdout == proc.stdout


def test_help_lists_the_commands_in_the_order_a_user_meets_them(tmp_path: Path) -> None:
    proc = certbroker(tmp_path, "--help")
    box = proc.stdout.split("Commands")[1]
    listed = re.findall(r"^│ (\S+) ", box, re.MULTILINE)
    assert listed == TOP_LEVEL


Found = Iterator[tuple[list[str], "_click.Command"]]


def every_command() -> Found:
    """Each command and group, the root included, with its path, all loaded."""

    def walk(path: list[str], command: _click.Command) -> Found:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk([*path, name], sub)

    yield [], root()[0]
    for name, command in real_commands().items():
        yield from walk([name], command)


def test_no_help_shows_a_type_for_a_flag() -> None:
    """`--wait`, not `--wait <bool>`: a flag takes no value (cli/lazy.py `plain_flags`)."""
    runner = CliRunner()
    flags_seen = 0
    for path, command in every_command():
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path
        flags = [p for p in command.params if isinstance(p, TyperOption) and p.is_flag]
        for opt in [o for p in flags for o in p.opts if o.startswith("--")] + ["--help"]:
            line = next(ln for ln in result.output.splitlines() if f" {opt} " in ln)
            after = [t for t in line.split(f" {opt} ", 1)[1].split() if not t.startswith("-")]
            assert not after[0].startswith("<"), (path, line)  # a type would come first
            flags_seen += 1
    assert flags_seen > 40  # every command has --help, many have --json, --wait, ...


def test_help_imports_no_command(tmp_path: Path) -> None:
    """Nor what Typer's renderer imports for Markdown help and pretty tracebacks."""
    code = (
        "import json, sys\n"
        "sys.argv = ['certbroker', '--help']\n"
        "from certbroker.cli.main import run\n"
        "try:\n"
        "    run()\n"
        "finally:\n"
        "    print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Commands" in proc.stdout
    modules = set(json.loads(proc.stderr))
    assert "typer.rich_utils" in modules
    unwanted = [*COMMAND_MODULES, "rich.markdown", "rich.traceback", "markdown_it", "pygments"]
    assert [m for m in unwanted if m in modules] == []


def test_no_arguments_show_the_help_and_exit_2(tmp_path: Path) -> None:
    proc = certbroker(tmp_path)
    assert proc.returncode == 2
    assert proc.stdout.rstrip("\n") == certbroker(tmp_path, "--help").stdout.rstrip("\n")


def test_version(tmp_path: Path) -> None:
    proc = certbroker(tmp_path, "--version")
    assert (proc.returncode, proc.stdout) == (0, "certbroker 0.1.0\n")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cert", "--help"], ["Usage: python -m certbroker cert", "request", "export", "revoke"]),
        (["cert", "request", "--help"], ["--challenge", "--wait"]),
        (["dns", "add", "--help"], ["Usage: python -m certbroker dns add", "--provider"]),
        (["account", "--help"], ["register", "rollover"]),
        (["events", "--help"], ["--since", "What happened, oldest first"]),
        (["audit", "--help"], ["--since", "--actor", "--json", "The audit log, newest last"]),
        (["log-level", "--help"], ["COMPONENT", "--reset"]),
        (["serve", "--help"], ["Run the broker"]),
        (["config", "--help"], ["show", "new-master-key"]),
    ],
)
def test_each_commands_help(tmp_path: Path, args: list[str], expected: list[str]) -> None:
    proc = certbroker(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    for part in expected:
        assert part in flat(proc.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch"], "No such command 'nosuch'; see `CB --help`"),
        (["certs"], "No such command 'certs'. Did you mean 'cert'?; see `CB --help`"),
        (["cert", "nosuch"], "No such command 'nosuch'; see `CB cert --help`"),
        (["--bogus"], "No such option: --bogus; see `CB --help`"),
    ],
)
def test_unknown_command_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = certbroker(tmp_path, *args)
    line = "error: " + message.replace("CB", "python -m certbroker") + "\n"
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line)


def test_typers_markdown_and_tracebacks_still_work() -> None:
    """The stand-ins of `import_rich_utils` give the real classes when Typer uses them."""
    code = """
import sys
from certbroker.cli.lazy import import_rich_utils

import_rich_utils()
assert "rich.markdown" not in sys.modules and "rich.traceback" not in sys.modules
from typer import rich_utils
from rich.markdown import Markdown
from rich.traceback import Traceback

assert isinstance(rich_utils.Markdown("*x*"), Markdown)
try:
    raise ValueError("boom")
except ValueError as exc:
    assert isinstance(rich_utils.Traceback.from_exception(ValueError, exc, None), Traceback)

import typer
demo = typer.Typer(rich_markup_mode="markdown")

@demo.command()
def hello() -> None:
    '''Say **hello**.'''

demo(["--help"])
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Say hello." in proc.stdout
