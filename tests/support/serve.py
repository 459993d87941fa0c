"""Running `certbroker serve` in tests: start it on a CLI's store, wait, stop it."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx

from tests.conftest import Cli


def start_serve(cli: Cli, **env: str) -> subprocess.Popen[str]:
    """`certbroker serve` on the CLI's store and Pebble; its log on stdout (and stderr)."""
    return subprocess.Popen(
        [sys.executable, "-m", "certbroker", "serve"],
        env={**cli.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_serve(serve: subprocess.Popen[str]) -> str:
    """SIGTERM, wait for it to end, and return what it printed."""
    serve.send_signal(signal.SIGTERM)
    out, _ = serve.communicate(timeout=60)
    return out


def wait_until(
    what: str,
    done: Callable[[], object],
    *,
    serve: subprocess.Popen[str] | None = None,
    timeout: float = 60.0,
    interval: float = 0.2,
) -> None:
    """Poll `done` until it is true; fail naming `what` on timeout or if `serve` ended."""
    deadline = time.monotonic() + timeout
    while not done():
        if serve is not None and serve.poll() is not None:
            raise AssertionError(f"serve ended while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def api_url(cli: Cli) -> str:
    """Where `serve` on this CLI's store answers the API and console."""
    return "http://" + cli.env["CERTBROKER_LISTEN"]


def start_api(cli: Cli, **env: str) -> subprocess.Popen[str]:
    """`certbroker serve`, once its API answers and its workers have started (the API
    answers first: under load, a test's first look at /readyz found "the workers are
    starting")."""
    import httpx

    serve = start_serve(cli, **env)
    url = api_url(cli)

    def answers() -> bool:
        try:
            if httpx.get(url + "/api/v1/openapi.json", timeout=2, trust_env=False).is_error:
                return False
            ready = httpx.get(url + "/readyz", timeout=5, trust_env=False).json()
            return "the workers are starting" not in ready.get("problems", [])
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_until("the API to answer", answers, serve=serve, timeout=60)
    except AssertionError:
        print(stop_serve(serve))
        raise
    return serve


@contextlib.contextmanager
def console_session(base_url: str, name: str, password: str) -> Iterator[httpx.Client]:
    """An HTTP client logged in to the console, through the log-in form as a browser
    sends it (with its one-time log-in token)."""
    import re

    with httpx.Client(base_url=base_url, timeout=60, trust_env=False) as client:
        form = client.get("/login")
        login_token = re.search(r'name="login_token" value="([^"]+)"', form.text)
        assert login_token, form.text
        answer = client.post(
            "/login",
            data={"name": name, "password": password, "login_token": login_token.group(1)},
        )
        assert answer.status_code == 303, answer.text
        assert "certbroker_session" in client.cookies
        yield client
