"""nginx (the Debian package) serving a webroot on loopback, for the benchmarks that put
certbroker beside it: the responder's (a key authorization as a static file) and uacme's
(the files its hook writes). Started in the foreground with its files all under one
directory, waited for, and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import wait_for_tcp
from tests.support.processes import log_tail, spawn, terminate

CHALLENGES = ".well-known/acme-challenge"

CONF = """\
worker_processes {workers};
{user}
error_log {dir}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    default_type text/plain;
    sendfile on;          # as in Debian's /etc/nginx/nginx.conf
    tcp_nopush on;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/www;
        location ^~ /.well-known/acme-challenge/ {{
            default_type text/plain;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def nginx(
    binary: str, work: Path, port: int, workers: str = "1"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """nginx serving `work`/www on 127.0.0.1:`port` until the block ends; yields its master
    process (its workers are `children_of` it, up by then) and the webroot's challenge
    directory. Raises RuntimeError, with nginx's log, when it does not start."""
    (work / "tmp").mkdir(parents=True)
    challenges = work / "www" / CHALLENGES
    challenges.mkdir(parents=True)
    # As root, nginx's workers would switch to `nobody`, who cannot read this directory:
    # keep them the current user's (only root can switch, so only then is it said).
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf = work / "nginx.conf"
    conf.write_text(CONF.format(workers=workers, user=user, dir=work, port=port))
    argv = [
        binary, "-p", f"{work}/", "-c", str(conf), "-e", str(work / "error.log"),
        "-g", f"daemon off; pid {work}/nginx.pid;",
    ]  # fmt: skip
    proc = spawn(argv, work / "nginx.log")
    try:
        try:
            wait_for_tcp("127.0.0.1", port, timeout=20)
        except TimeoutError:
            raise RuntimeError(
                f"nginx did not start:\n{log_tail(work / 'nginx.log')}\n"
                f"{log_tail(work / 'error.log')}"
            ) from None
        deadline = time.monotonic() + 10
        while not children_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc, challenges
    finally:
        terminate(proc)
