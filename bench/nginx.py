"""nginx (the Debian package) serving a webroot on loopback, for the benchmarks that put
certbroker beside it: the responder's (a key authorization as a static file) and uacme's
(the files its hook writes). Started in the foreground with its files all under one
directory, waited for, and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.nginx import children_of, http_preamble, run_nginx, user_directive

__all__ = ["CHALLENGES", "children_of", "find_nginx", "nginx"]

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
{preamble}
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


@contextlib.contextmanager
def nginx(
    binary: str, work: Path, port: int, workers: str = "1"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """nginx serving `work`/www on 127.0.0.1:`port` until the block ends; yields its master
    process (its workers are `children_of` it, up by then) and the webroot's challenge
    directory. Raises RuntimeError, with nginx's log, when it does not start."""
    challenges = work / "www" / CHALLENGES
    challenges.mkdir(parents=True)
    conf = CONF.format(
        workers=workers, user=user_directive(), dir=work, port=port, preamble=http_preamble(work)
    )
    with run_nginx(binary, work, port, conf) as proc:
        yield proc, challenges
