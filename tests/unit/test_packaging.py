"""What `pipx install` from a checkout and the service files need: a wheel built from the
files git tracks holds the console's templates and static files and every migration; the
systemd unit passes `systemd-analyze verify` and starts a command line certbroker takes."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "contrib" / "systemd" / "certbroker.service"


def _directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_a_wheel_of_the_checkout_holds_templates_static_files_and_migrations(
    tmp_path: Path,
) -> None:
    # Built from a copy of what git tracks: the build leaves build/ and *.egg-info behind.
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split("\0")  # fmt: skip
    source = tmp_path / "checkout"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=source, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("certbroker-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    src = ROOT / "src"
    patterns = (
        "certbroker/web/templates/*.html",
        "certbroker/web/static/*",
        "certbroker/store/migrations/versions/*.py",
        "certbroker/store/alembic.ini",
        "certbroker/py.typed",
    )
    wanted = [p.relative_to(src).as_posix() for pattern in patterns for p in src.glob(pattern)]
    assert len(wanted) > 40
    assert sorted(set(wanted) - names) == []


def test_the_systemd_unit_verifies_and_runs_a_command_certbroker_takes(tmp_path: Path) -> None:
    text = UNIT.read_text()
    directives = _directives(text)
    assert directives["User"] == ["certbroker"] and directives["StateDirectory"] == ["certbroker"]
    assert directives["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert directives["NoNewPrivileges"] == ["yes"] and directives["ProtectSystem"] == ["strict"]
    (exec_start,) = directives["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/local/bin/certbroker" and argv[-1] == "serve"
    # The same unit with this checkout's certbroker (verify wants the program to exist).
    ours = str(Path(sys.executable).parent / "certbroker")
    unit = tmp_path / "certbroker.service"
    unit.write_text(text.replace("/usr/local/bin/certbroker", ours))
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                              text=True, check=False)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "certbroker.service" not in verified.stderr, verified.stderr  # no complaint about it
    # Its arguments, with a configuration file there: certbroker takes them.
    config = tmp_path / "certbroker.toml"
    config.write_text('data_dir = "var"\n')
    args = [ours, *argv[1:-1]]
    args[args.index("/etc/certbroker/certbroker.toml")] = str(config)
    helped = subprocess.run([*args, "serve", "--help"], capture_output=True, text=True,
                            check=False, cwd=tmp_path)  # fmt: skip
    assert helped.returncode == 0 and "Run the broker" in helped.stdout, helped.stderr
