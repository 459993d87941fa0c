"""A client's authority is checked at every delivery, not once when it connects (issue 24):
an agent's websocket and long poll against a real `serve`, the client changed through
the CLI (as another node would: through the store) while they are open."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, start_api, stop_serve

# The hub looks at the store every 0.25 s; the issue asks for 5 s. A generous bound here,
# for a loaded machine: what is checked is that the socket is closed at all.
CLOSED_WITHIN = 30.0


@dataclass
class Site:
    cli: Cli

    def add_client(self, name: str, allow: str) -> str:
        out = self.cli("client", "add", name, "--allow", allow).stdout
        return out.strip().splitlines()[-1]

    @contextlib.contextmanager
    def agent(self, token: str) -> Iterator[ClientConnection]:
        """An agent's websocket, greeted."""
        url = api_url(self.cli).replace("http://", "ws://") + "/api/v1/agent/ws"
        headers = {"Authorization": f"Bearer {token}"}
        with connect(url, additional_headers=headers, open_timeout=10) as socket:
            socket.send(json.dumps({"type": "hello", "certificates": []}))
            assert json.loads(socket.recv(timeout=30))["type"] == "welcome"
            yield socket


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("authority") / "data", pebble)
    cli.register()
    serve = start_api(cli, CERTBROKER_WORKER_PROCESSES="1")
    try:
        yield Site(cli)
    finally:
        stop_serve(serve)


def closed_by_the_broker(socket: ClientConnection) -> tuple[int | None, str]:
    """Read until the broker closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            socket.recv(timeout=CLOSED_WITHIN)
    frame = closed.value.rcvd
    return (frame.code, frame.reason) if frame is not None else (None, "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (("client", "disable", "{name}"), "is disabled"),
        (("client", "rotate-token", "{name}"), "has a new token"),
        (("client", "delete", "{name}"), "was deleted"),
    ],
    ids=["disable", "rotate-token", "delete"],
)
def test_an_agents_socket_is_closed_when_its_client_changes(
    site: Site, change: tuple[str, ...], reason: str
) -> None:
    name = f"gw-{change[1]}"
    token = site.add_client(name, "*.authority.example.com")
    with site.agent(token) as socket:
        site.cli(*(part.format(name=name) for part in change))
        code, said = closed_by_the_broker(socket)
    assert code == 1008 and reason in said


def test_an_agents_long_poll_ends_when_its_client_is_disabled(site: Site) -> None:
    token = site.add_client("gw-poll", "*.authority.example.com")
    url = api_url(site.cli) + "/api/v1/agent/poll"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60, trust_env=False) as http:
        hello = {"hello": {"type": "hello", "certificates": []}, "wait": 0}
        first = http.post(url, headers=headers, json=hello)
        assert first.status_code == 200, first.text
        answers: list[httpx.Response] = []
        waiting = threading.Thread(
            target=lambda: answers.append(http.post(url, headers=headers, json={"wait": 50}))
        )
        waiting.start()
        time.sleep(1)  # the poll is waiting (a disable before it would be refused at the door)
        site.cli("client", "disable", "gw-poll")
        waiting.join(CLOSED_WITHIN)
    assert answers and answers[0].status_code == 401
    assert "is disabled: the poll ends" in answers[0].text  # ended mid-poll


def test_a_devices_socket_is_closed_when_its_client_is_disabled(site: Site) -> None:
    token = site.add_client("device-1", "*.authority.example.com")
    url = api_url(site.cli).replace("http://", "ws://") + "/api/v1/csr/ws"
    headers = {"Authorization": f"Bearer {token}"}
    with connect(url, additional_headers=headers, open_timeout=10) as socket:
        socket.send("not json")  # answered: the connection is up and served
        assert json.loads(socket.recv(timeout=30))["error"]["status"] == 400
        site.cli("client", "disable", "device-1")
        code, said = closed_by_the_broker(socket)
    assert code == 1008 and "is disabled" in said


def test_a_websocket_message_over_the_cap_closes_the_socket(site: Site) -> None:
    """Issue 24, finding 6: a message is capped as a request body is (1 MiB), not at
    uvicorn's 16 MiB."""
    token = site.add_client("gw-big", "*.authority.example.com")
    with site.agent(token) as socket:
        try:
            socket.send(json.dumps({"type": "ack", "tokens": ["x" * (2 << 20)]}))
        except ConnectionClosed as closed:  # the broker closed it while it was being sent
            code = closed.rcvd.code if closed.rcvd is not None else None
        else:
            code, _ = closed_by_the_broker(socket)
    # 1009, message too big; or no close frame at all, when the broker's close reset the
    # connection while the message was still being written. Under the old 16 MiB cap the
    # message was taken and nothing closed the socket.
    assert code in (1009, None)
