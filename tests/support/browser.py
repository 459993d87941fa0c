"""The console in a browser: Debian's Chromium driven by Playwright (no browser
download), logging in, and a gate that holds HTTP-01 validation until a test opens it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def log_in(page: Page, name: str, password: str, path: str = "/") -> None:
    """Open `path`, which sends the browser to the log-in form, and log in there."""
    page.goto(path)
    page.fill("#name", name)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("button[type=submit]")


class HttpGate:
    """Listens where Pebble validates HTTP-01 and passes each connection on to the
    broker's responder only once `open()` was called, so a test decides when an order
    can become valid."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.target_port = target_port
        self._open = threading.Event()
        self._closing = False
        self._server = socket.create_server(("127.0.0.1", listen_port))
        self._thread = threading.Thread(target=self._accept, name="http-gate", daemon=True)
        self._thread.start()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closing = True
        self._open.set()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._pass_on, args=(conn,), daemon=True).start()

    def _pass_on(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            self._open.wait(120)
            if self._closing:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            except OSError:
                return
            with contextlib.closing(upstream):
                back = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
                back.start()
                _pipe(conn, upstream)
                back.join(30)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@contextlib.contextmanager
def http_gate(listen_port: int, target_port: int) -> Iterator[HttpGate]:
    gate = HttpGate(listen_port, target_port)
    try:
        yield gate
    finally:
        gate.close()


def new_page(browser: Browser, base_url: str, width: int = 1280, height: int = 800) -> Page:
    """A page in a context of its own (its own cookies), at desktop width by default."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    context.set_default_timeout(20_000)
    return context.new_page()


def csrf_of(page: Page) -> str:
    """The session's CSRF token, as the page's forms carry it."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token
