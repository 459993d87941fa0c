"""Deleted means gone (issue 24): every kind of object is deleted while agents, devices
and pollers are connected, then a new object of the same kind (and name) is made, and
nothing meant for the old one reaches anyone through the new one. Finding 1 end to end:
an agent subscribed to a deleted certificate gets nothing of the next certificate, nor
its broker-held key.

One `certbroker serve` for the module, on the shared Pebble; every name resolves to
127.0.0.1 (pebble-challtestsrv's default), where the broker's own responder answers
HTTP-01, also the tokens handed to agents (the test's agents acknowledge them, as
`certbroker agent` does, so the order goes on). Each test has its own names and zone,
so that no agent of another test is asked to acknowledge its tokens."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Cli, make_cli
from tests.support.pebble import PebbleServer
from tests.support.serve import api_url, console_session, start_api, stop_serve, wait_until
from tests.support.webhook_receiver import Receiver, signature_ok

# What the broker closes or ends should go within 5 s (the hub looks every 0.25 s, a
# device socket every 2 s); a generous bound for a loaded machine.
CLOSED_WITHIN = 30.0
ISSUED_WITHIN = 120.0
RETRY_FIRST = 2  # seconds before a failed webhook delivery is tried again


@dataclass
class Site:
    cli: Cli
    serve: subprocess.Popen[str]
    http: httpx.Client  # the API, as an admin

    @property
    def url(self) -> str:
        return api_url(self.cli)

    def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        answer = self.http.request(method, "/api/v1" + path, **kwargs)
        assert answer.status_code == status, f"{method} {path}: {answer.text}"
        return answer.json()

    def refused(self, method: str, path: str, status: int, **kwargs: Any) -> str:
        answer = self.http.request(method, "/api/v1" + path, **kwargs)
        assert answer.status_code == status, f"{method} {path}: {answer.text}"
        detail: str = answer.json()["detail"]
        return detail

    def add_client(self, name: str, *allow: str) -> tuple[int, str]:
        added = self.call("POST", "/clients", 201, json={"name": name, "allow": list(allow)})
        return int(added["id"]), str(added["token"])

    def request(self, names: list[str], **body: Any) -> int:
        return int(self.call("POST", "/certificates", 202, json={"names": names, **body})["id"])

    def certificate(self, cert_id: int) -> dict[str, Any]:
        shown: dict[str, Any] = self.call("GET", f"/certificates/{cert_id}")
        return shown

    def issued(self, cert_id: int, not_serial: str | None = None) -> dict[str, Any]:
        """The certificate once it is issued (with a serial other than `not_serial`)."""

        def done() -> bool:
            shown = self.certificate(cert_id)
            return shown["status"] == "valid" and shown["serial"] not in (None, not_serial)

        wait_until(f"certificate {cert_id} issued", done, serve=self.serve,
                   timeout=ISSUED_WITHIN)  # fmt: skip
        return self.certificate(cert_id)

    def as_(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                            trust_env=False, timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Iterator[Site]:
    cli = make_cli(tmp_path_factory.mktemp("gone") / "data", pebble)
    cli.register()
    admin = cli("token", "create", "--name", "gone-admin", "--role", "admin").stdout
    serve = start_api(
        cli,
        CERTBROKER_WORKER_PROCESSES="1",
        CERTBROKER_SCHEDULER_INTERVAL="0.5",
        CERTBROKER_WEBHOOK_RETRY_FIRST=str(RETRY_FIRST),
    )
    headers = {"Authorization": f"Bearer {admin.split()[-1]}"}
    try:
        with httpx.Client(base_url=api_url(cli), headers=headers, trust_env=False,
                          timeout=60) as http:  # fmt: skip
            yield Site(cli, serve, http)
    finally:
        stop_serve(serve)


# -- an agent's two ways in ----------------------------------------------------------------


class Agent:
    """An agent's websocket, read by a thread of its own: every message kept, and the
    HTTP-01 tokens it is sent acknowledged, as `certbroker agent` does."""

    def __init__(self, site: Site, token: str, names: list[str], key: str = "broker") -> None:
        self.site = site
        url = site.url.replace("http://", "ws://") + "/api/v1/agent/ws"
        self._stack = contextlib.ExitStack()
        self.socket: ClientConnection = self._stack.enter_context(
            connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        )
        self.messages: list[dict[str, Any]] = []
        self.closed: tuple[int | None, str] | None = None  # the broker's close frame
        self._lock = threading.Lock()
        hello = {"type": "hello", "certificates": [{"names": names, "key": key}]}
        self.socket.send(json.dumps(hello))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = json.loads(self.socket.recv())
                with self._lock:
                    self.messages.append(message)
                if message.get("type") == "tokens":
                    ack = {"type": "ack", "tokens": sorted(message["tokens"])}
                    self.socket.send(json.dumps(ack))
        except ConnectionClosed as closed:
            frame = closed.rcvd
            self.closed = (frame.code, frame.reason) if frame is not None else (None, "")

    def seen(self, start: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages[start:])

    def welcome(self) -> dict[str, Any]:
        wait_until("the welcome", lambda: self._of_type("welcome"), serve=self.site.serve)
        return self._of_type("welcome")[0]

    def certificate(self, cert_id: int) -> dict[str, Any]:
        """The certificate it is sent (waiting for it)."""

        def sent() -> list[dict[str, Any]]:
            if self.closed is not None:
                raise AssertionError(f"the broker closed the agent's socket: {self.closed}")
            return [m for m in self._of_type("certificate") if m["certificate_id"] == cert_id]

        wait_until(f"certificate {cert_id} sent to the agent", sent, serve=self.site.serve,
                   timeout=ISSUED_WITHIN)  # fmt: skip
        return sent()[0]

    def tokens(self) -> set[str]:
        """Every HTTP-01 token it was ever sent."""
        return {t for m in self._of_type("tokens") for t in m["tokens"]}

    def _of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.seen() if m.get("type") == kind]

    def close(self) -> None:
        self._stack.close()
        self._reader.join(10)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Poller:
    """An agent's long polls, one after another in a thread until stopped; what it was
    sent is `seen` (not sent again), the tokens it was sent are the ones it holds."""

    def __init__(self, site: Site, token: str, seen: set[str], wait: float = 1.0) -> None:
        self.url = site.url + "/api/v1/agent/poll"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.seen, self.held, self.wait = set(seen), set[str](), wait
        self.messages: list[dict[str, Any]] = []
        self.polls = 0  # answered
        self.ended: httpx.Response | None = None  # the answer that was not 200
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120, trust_env=False) as http:
            while not self._stop.is_set():
                body = {"tokens": sorted(self.held), "seen": sorted(self.seen), "wait": self.wait}
                answer = http.post(self.url, headers=self.headers, json=body)
                if answer.status_code != 200:
                    self.ended = answer
                    return
                for message in answer.json():
                    self.messages.append(message)
                    if message["type"] == "certificate":
                        self.seen.add(f"certificate:{message['certificate_id']}:"
                                      f"{message['serial']}")  # fmt: skip
                    elif message["type"] == "tokens":
                        self.held = set(message["tokens"])
                self.polls += 1

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(CLOSED_WITHIN)


def poll_once(site: Site, token: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60, trust_env=False) as http:
        answer = http.post(site.url + "/api/v1/agent/poll", headers=headers, json=body)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


# -- certificates (finding 1) --------------------------------------------------------------


def test_an_agent_of_a_deleted_certificate_gets_nothing_of_the_next_one(site: Site) -> None:
    """Certificate N, its key held by the broker, goes to gw-one's agent (websocket and
    long poll). N is deleted while both are open; gw-two's agent then gets two new
    certificates with keys of their own: the first for names gw-one may have too (so
    its allow-list does not stand in the way: finding 1 gave this one N's id and sent
    it, key and all, to gw-one's agent), the second for names only gw-two may have.
    gw-one's agent is sent neither certificate nor key; of the first it is sent the
    HTTP-01 tokens (every agent allowed a name answers them, the CA may reach any), of
    the second not even those. The protocol has no "gone" message: nothing more is
    sent for N."""
    _, one = site.add_client("gw-one", "*.one.gone.example.com", "*.shared.gone.example.com")
    _, two = site.add_client("gw-two", "*.two.gone.example.com", "*.shared.gone.example.com")
    wanted: dict[str, Any] = {"names": ["www.one.gone.example.com"], "key": "broker"}
    with Agent(site, one, wanted["names"]) as first:
        (answer,) = first.welcome()["certificates"]
        old_id = answer["certificate_id"]
        old = first.certificate(old_id)
        assert "PRIVATE KEY" in old["key"] and old["key_mode"] == "broker"
        # The same client's long poll is sent N too: this way in works.
        hello = {"type": "hello", "certificates": [wanted]}
        polled = poll_once(site, one, {"hello": hello, "wait": 0})
        assert polled[0]["certificates"][0]["certificate_id"] == old_id
        assert [m["certificate_id"] for m in polled if m["type"] == "certificate"] == [old_id]
        shown = site.call("GET", "/clients/gw-one")["installations"]
        assert [i["certificate_id"] for i in shown] == [old_id]

        with Poller(site, one, seen={f"certificate:{old_id}:{old['serial']}"}) as poller:
            wait_until("a first poll", lambda: poller.polls >= 1, serve=site.serve)
            ws_mark, poll_mark = len(first.seen()), len(poller.messages)
            deleted = site.call("DELETE", f"/certificates/{old_id}")
            assert deleted["deleted"] is True

            with Agent(site, two, ["www.shared.gone.example.com"]) as second:
                (answer,) = second.welcome()["certificates"]
                shared_id = answer["certificate_id"]
                shared = second.certificate(shared_id)
            with Agent(site, two, ["www.two.gone.example.com"]) as third:
                (answer,) = third.welcome()["certificates"]
                own_id = answer["certificate_id"]
                own = third.certificate(own_id)
                own_tokens = third.tokens()
            # Issued and sent in one look of the hub for every agent; the poller looks
            # again three times after it (a poll waits 1 s when there is nothing).
            polls = poller.polls
            wait_until("three more polls", lambda: poller.polls >= polls + 3, serve=site.serve)
        assert poller.ended is None, poller.ended.text if poller.ended else ""
        after_ws = first.seen(ws_mark)
        after_poll = poller.messages[poll_mark:]
        assert first.closed is None  # gw-one's agent stayed connected throughout

    # Nothing but tokens reached gw-one's agent: no certificate (neither N nor a new one),
    # no key; and none of the tokens of the order for names it may not have.
    assert [m for m in after_ws if m["type"] != "tokens"] == [], after_ws
    assert [m for m in after_poll if m["type"] != "tokens"] == [], after_poll
    assert own_tokens, "gw-two's agent was sent the tokens of its order"
    assert first.tokens().isdisjoint(own_tokens)
    assert all(set(m["tokens"]).isdisjoint(own_tokens) for m in after_poll)
    everything = json.dumps(first.seen()) + json.dumps(poller.messages)
    for new in (shared, own):
        assert "PRIVATE KEY" in new["key"] and new["key"] != old["key"]
        assert new["key"] not in everything and new["serial"] not in everything
    assert old_id < shared_id < own_id  # ids are never given again
    # N's subscription went with it; the new certificates are gw-two's alone.
    assert site.call("GET", "/clients/gw-one")["installations"] == []
    installed = site.call("GET", "/clients/gw-two")["installations"]
    assert sorted(i["certificate_id"] for i in installed) == [shared_id, own_id]
    assert site.http.get(f"/api/v1/certificates/{old_id}").status_code == 404


# -- clients ----------------------------------------------------------------------------


def test_a_deleted_clients_connections_end_and_a_new_one_of_its_name_gets_nothing_of_it(
    site: Site,
) -> None:
    """Client `dev`, with its agent's websocket, a long poll and a device's socket open,
    is deleted: each ends, its token is refused. A new client `dev` has a new id and
    token; the old token does not work for it, and its agent is never sent the old
    client's certificate or key."""
    names = ["www.dev.gone.example.com"]
    old_id, old_token = site.add_client("dev", "*.dev.gone.example.com")
    with Agent(site, old_token, names) as agent:
        (answer,) = agent.welcome()["certificates"]
        old_cert = answer["certificate_id"]
        old = agent.certificate(old_cert)

        # A long poll that waits (the agent's `hello` marked it connected; the poll's
        # own mark says it passed the door).
        before = site.call("GET", "/clients/dev")["agent_at"]
        polls: list[httpx.Response] = []

        def long_poll() -> None:
            headers = {"Authorization": f"Bearer {old_token}"}
            with httpx.Client(timeout=120, trust_env=False) as http:
                url = site.url + "/api/v1/agent/poll"
                # What it was sent already is not sent again: the poll waits.
                body = {"seen": [f"certificate:{old_cert}:{old['serial']}"], "wait": 55}
                polls.append(http.post(url, json=body, headers=headers))

        waiting = threading.Thread(target=long_poll, daemon=True)
        waiting.start()
        wait_until("the poll to wait", lambda: site.call("GET", "/clients/dev")["agent_at"]
                   != before, serve=site.serve)  # fmt: skip

        device_url = site.url.replace("http://", "ws://") + "/api/v1/csr/ws"
        with connect(device_url, additional_headers={"Authorization": f"Bearer {old_token}"},
                     open_timeout=10) as device:  # fmt: skip
            device.send("not json")  # answered: the device's socket is up and served
            assert json.loads(device.recv(timeout=30))["error"]["status"] == 400

            site.call("DELETE", "/clients/dev")
            with pytest.raises(ConnectionClosed) as device_closed:
                while True:
                    device.recv(timeout=CLOSED_WITHIN)
        wait_until("the agent's socket closed", lambda: agent.closed is not None,
                   timeout=CLOSED_WITHIN, serve=site.serve)  # fmt: skip
        waiting.join(CLOSED_WITHIN)

    frame = device_closed.value.rcvd
    assert frame is not None and frame.code == 1008 and "was deleted" in frame.reason
    assert agent.closed is not None
    assert agent.closed[0] == 1008 and "was deleted" in agent.closed[1]
    assert polls and polls[0].status_code == 401 and "was deleted: the poll ends" in polls[0].text
    with site.as_(old_token) as gone:
        assert gone.get("/api/v1/client/certificates").status_code == 401
    # Its certificate stays (history, exports) but is no one's, and disabled.
    kept = site.certificate(old_cert)
    assert kept["disabled"] is True

    new_id, new_token = site.add_client("dev", "*.dev.gone.example.com")
    assert new_id != old_id and new_token != old_token
    with site.as_(old_token) as gone:
        assert gone.get("/api/v1/client/certificates").status_code == 401
        refused = gone.post(site.url + "/api/v1/agent/poll", json={"wait": 0})
        assert refused.status_code == 401
    with site.as_(new_token) as dev:
        listed = dev.get("/api/v1/client/certificates")
        assert listed.status_code == 200 and listed.json() == []
        assert dev.get(f"/api/v1/client/certificates/{old_cert}").status_code == 404
    # The new client's agent asks for the same names: a certificate of its own, with a
    # key of its own; never the old client's.
    with Agent(site, new_token, names) as agent:
        (answer,) = agent.welcome()["certificates"]
        assert answer["certificate_id"] != old_cert
        new = agent.certificate(answer["certificate_id"])
        sent = agent.seen()
    assert new["key"] != old["key"]
    assert old_cert not in [m.get("certificate_id") for m in sent]
    assert old["key"] not in json.dumps(sent)
    installed = site.call("GET", "/clients/dev")["installations"]
    assert [i["certificate_id"] for i in installed] == [answer["certificate_id"]]


# -- users and tokens ----------------------------------------------------------------------


def _csrf(client: httpx.Client) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text)
    assert found, "no CSRF token on the console's first page"
    return found.group(1)


def test_a_deleted_users_session_and_a_revoked_token_never_act_as_their_successors(
    site: Site,
) -> None:
    """A viewer `carol` logged in to the console and a viewer token `ci`; carol is
    deleted and the token revoked, then an admin `carol` and an admin token `ci` are
    made: the old session and the old token are refused (401), and never act as the
    new ones."""
    site.call("POST", "/users", 201, json={"name": "carol", "role": "viewer",
                                           "password": "carol-password-1"})  # fmt: skip
    old_token = site.call("POST", "/tokens", 201, json={"name": "ci", "role": "viewer"})
    with console_session(site.url, "carol", "carol-password-1") as old_session:
        csrf = _csrf(old_session)
        assert old_session.get("/api/v1/certificates").status_code == 200
        with site.as_(old_token["token"]) as old_ci:
            assert old_ci.get("/api/v1/certificates").status_code == 200

            site.call("DELETE", "/users/carol")
            site.call("DELETE", f"/tokens/{old_token['id']}")
            site.call("POST", "/users", 201, json={"name": "carol", "role": "admin",
                                                   "password": "carol-password-2"})  # fmt: skip
            new_token = site.call("POST", "/tokens", 201, json={"name": "ci", "role": "admin"})
            assert new_token["id"] != old_token["id"]

            # The old session: refused, for reading and for an admin's change alike.
            assert old_session.get("/api/v1/certificates").status_code == 401
            assert old_session.get("/api/v1/users").status_code == 401
            forged = old_session.delete(
                f"/api/v1/tokens/{new_token['id']}", headers={"X-CSRF-Token": csrf}
            )
            assert forged.status_code == 401
            page = old_session.get("/users", follow_redirects=False)
            assert page.status_code in (302, 303) and "/login" in page.headers["location"]
            # The old token: refused, not taken for the new `ci`.
            assert old_ci.get("/api/v1/certificates").status_code == 401
            assert old_ci.get("/api/v1/users").status_code == 401
    with site.as_(new_token["token"]) as new_ci:
        users = new_ci.get("/api/v1/users")
        assert users.status_code == 200  # the forged revocation did nothing
        (carol,) = [u for u in users.json() if u["name"] == "carol"]
        assert carol["role"] == "admin"
    with console_session(site.url, "carol", "carol-password-2") as new_session:
        assert new_session.get("/api/v1/users").status_code == 200
    tokens = {t["id"]: t for t in site.call("GET", "/tokens")}
    assert tokens[old_token["id"]]["revoked_at"] is not None
    assert tokens[new_token["id"]]["revoked_at"] is None


# -- push targets ------------------------------------------------------------------------


def _serial_of(path: Path) -> str:
    """The serial of the leaf in a fullchain file, as the broker shows serials."""
    leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return format(leaf.serial_number, "x")


def test_a_new_target_of_a_deleted_ones_name_gets_none_of_its_certificates(
    site: Site, tmp_path: Path
) -> None:
    """Certificate T goes to target `web` (a directory) and to `keep`; `web` is deleted
    and a new `web` (another directory) is added; T's renewal reaches `keep` and not
    the new `web`, which has no certificate until one is attached to it."""
    cert_id = site.request(["tgt.gone.example.com"])
    first = site.issued(cert_id)
    old_dir, new_dir, keep_dir = tmp_path / "old-web", tmp_path / "new-web", tmp_path / "keep"
    for directory in (old_dir, new_dir, keep_dir):
        directory.mkdir()
    site.call("POST", "/targets", 201, json={"name": "keep", "local": str(keep_dir)})
    web = site.call("POST", "/targets", 201, json={"name": "web", "local": str(old_dir)})
    for target, directory in (("keep", keep_dir), ("web", old_dir)):
        site.call("POST", f"/targets/{target}/attach", json={"certificate_id": cert_id})
        fullchain = directory / "fullchain.pem"

        def there(path: Path = fullchain) -> bool:
            return path.exists() and _serial_of(path) == first["serial"]

        wait_until(f"the certificate in {target}", there, serve=site.serve)

    site.call("DELETE", "/targets/web")
    new_web = site.call("POST", "/targets", 201, json={"name": "web", "local": str(new_dir)})
    site.call("POST", f"/certificates/{cert_id}/renew", 202)
    renewed = site.issued(cert_id, not_serial=first["serial"])
    wait_until("the renewal in keep", lambda: _serial_of(keep_dir / "fullchain.pem")
               == renewed["serial"], serve=site.serve)  # fmt: skip

    targets = site.call("GET", f"/certificates/{cert_id}/targets")
    assert [t["target"] for t in targets] == ["keep"]
    assert site.call("GET", "/targets/web")["certificates"] == []
    refused = site.refused("POST", f"/certificates/{cert_id}/deploy", 422,
                           json={"target": "web"})  # fmt: skip
    assert "does not go to target 'web'" in refused
    assert list(new_dir.iterdir()) == []  # nothing went to the new `web`
    assert _serial_of(old_dir / "fullchain.pem") == first["serial"]  # nor to the old one
    assert new_web["id"] > web["id"]  # ids are never given again


# -- webhooks -----------------------------------------------------------------------------


def test_a_deleted_webhooks_deliveries_never_reach_a_new_one_at_its_address(
    site: Site,
) -> None:
    """Webhook 1 (issued) fails its delivery of an issuance (500) and would try again;
    it is deleted, and webhook 2 (renewed only) is added at the same URL. The receiver
    gets webhook 2's renewal, signed with webhook 2's secret, and nothing of webhook 1:
    not its pending delivery, not the issuances webhook 2 did not ask for."""
    failing = {"on": True}
    with Receiver(lambda _n: 500 if failing["on"] else 200) as receiver:
        hook = {"url": receiver.url, "allow_private": True}
        first = site.call("POST", "/webhooks", 201, json={**hook, "events": ["issued"]})
        cert_id = site.request(["hook.gone.example.com"])
        site.issued(cert_id)

        failed: list[dict[str, Any]] = []

        def failed_once() -> bool:
            logged = site.call("GET", f"/webhooks/{first['id']}/deliveries")
            failed[:] = [d for d in logged if d["state"] == "failed" and d["next_try_at"]]
            return bool(failed)

        wait_until("webhook 1's failed delivery", failed_once, serve=site.serve)
        (pending,) = failed  # to be tried again at next_try_at
        site.call("DELETE", f"/webhooks/{first['id']}")
        deleted_at = len(receiver.requests())
        old_ids = {r.headers["webhook-id"] for r in receiver.requests()}
        assert pending["message_id"] in old_ids
        failing["on"] = False

        second = site.call("POST", "/webhooks", 201, json={**hook, "events": ["renewed"]})
        receiver.secret = second["secret"]
        site.call("POST", f"/certificates/{cert_id}/renew", 202)
        other = site.request(["hook2.gone.example.com"])  # an issuance: not for webhook 2
        site.issued(other)

        def renewal_received() -> bool:
            kinds = [json.loads(r.body)["type"] for r in receiver.requests()[deleted_at:]]
            return "certificate.renewed" in kinds

        wait_until("webhook 2's renewal", renewal_received, serve=site.serve,
                   timeout=ISSUED_WITHIN)  # fmt: skip
        # Webhook 1's delivery was due again at next_try_at: well past it now.
        due = datetime.fromisoformat(pending["next_try_at"]).timestamp() + 3 * RETRY_FIRST
        wait_until("webhook 1's retry to be long due",
                   lambda: datetime.now(UTC).timestamp() > due, serve=site.serve)  # fmt: skip
        after = receiver.requests()[deleted_at:]

    # At most webhook 1's attempt already under way as it was deleted, signed with its
    # own secret; everything else is webhook 2's, its renewal alone.
    old = [r for r in after if not signature_ok(second["secret"], r.headers, r.body)]
    assert len(old) <= 1 and all(r.headers["webhook-id"] in old_ids for r in old), old
    new = [r for r in after if signature_ok(second["secret"], r.headers, r.body)]
    assert [json.loads(r.body)["type"] for r in new] == ["certificate.renewed"]
    assert new[0].headers["webhook-id"] not in old_ids
    logged = site.call("GET", f"/webhooks/{second['id']}/deliveries")
    assert [d["kind"] for d in logged] == ["renewed"]
    assert second["id"] > first["id"]  # ids are never given again


# -- DNS accounts and ACME accounts ----------------------------------------------------------

TSIG_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def _dns_account(site: Site, name: str, zones: list[str], key_name: str) -> dict[str, Any]:
    options = {"server": "127.0.0.1:9", "tsig_key_name": key_name, "tsig_secret": TSIG_SECRET}
    added: dict[str, Any] = site.call("POST", "/dns-accounts", 201, json={
        "name": name, "provider": "rfc2136", "options": options, "zones": zones})  # fmt: skip
    return added


def test_a_dns_account_in_use_is_not_deleted_and_a_new_one_of_its_name_inherits_nothing(
    site: Site,
) -> None:
    """A DNS account a certificate names is not deleted from under it (a clear refusal);
    one that is deleted takes its zones with it, so a new account of the same name is
    the default of no zone and no certificate of the old one's uses it."""
    used = _dns_account(site, "dns-used", [], "key-used")
    cert_id = site.request(["x.dnsgone.example.com"], challenge="dns-01", dns_account="dns-used")
    site.call("POST", f"/certificates/{cert_id}/disable")  # its server is nowhere
    refused = site.refused("DELETE", "/dns-accounts/dns-used", 422)
    assert "is chosen by 1 certificate" in refused
    assert site.certificate(cert_id)["dns_account"] == "dns-used"
    assert site.call("GET", "/dns-accounts/dns-used")["id"] == used["id"]

    zoned = _dns_account(site, "dns-zone", ["zone.dnsgone.example.com"], "key-old")
    site.call("DELETE", "/dns-accounts/dns-zone")
    again = _dns_account(site, "dns-zone", [], "key-new")
    assert again["id"] != zoned["id"]
    assert site.call("GET", "/dns-accounts/dns-zone")["zones"] == []
    # A by-zone request for the zone finds no account: the new one was not made its default.
    proc = site.refused("POST", "/certificates", 422, json={
        "names": ["a.zone.dnsgone.example.com"], "challenge": "dns-01"})  # fmt: skip
    assert "no DNS account for a.zone.dnsgone.example.com" in proc


def test_the_dns_account_deleted_is_the_one_named_never_one_whose_id_the_name_spells(
    site: Site,
) -> None:
    """`dns delete 7` (a DNS account's name may be all digits) deletes the account named
    "7", never another account whose ID is 7: that one, its secrets and the zones it is
    the default of stay; and once "7" is gone, what names it finds nothing rather than
    account 7. The look-up took either, whichever the database returned first (on
    SQLite: the one with the ID)."""
    other = _dns_account(site, "dns-spelled", ["spelled.dnsgone.example.com"], "key-other")
    named = _dns_account(site, str(other["id"]), [], "key-named")
    shown = site.call("GET", f"/dns-accounts/{other['id']}")
    gone = site.call("DELETE", f"/dns-accounts/{other['id']}")
    assert (gone["id"], shown["id"]) == (named["id"], named["id"])
    left = {a["name"]: a for a in site.call("GET", "/dns-accounts")}
    assert str(other["id"]) not in left
    assert left["dns-spelled"]["id"] == other["id"]
    assert left["dns-spelled"]["zones"] == ["spelled.dnsgone.example.com"]
    # Gone: what named it finds nothing, not the account whose ID the name spells.
    assert site.http.get(f"/api/v1/dns-accounts/{other['id']}").status_code == 404
    refused = site.refused("POST", "/certificates", 404, json={
        "names": ["b.spelled.dnsgone.example.com"], "challenge": "dns-01",
        "dns_account": str(other["id"])})  # fmt: skip
    assert f"no DNS account '{other['id']}'" in refused


def test_an_acme_account_a_certificate_falls_back_to_is_not_deleted_from_under_it(
    site: Site,
) -> None:
    """ACME accounts a certificate uses, as its account or as the one it falls back to
    (CA fallback), are not deleted from under it; once deleted, an account registered
    again under the same name is a new account (new id, new key, new URL at the CA),
    and no certificate of the old one uses it."""
    fallback = site.cli.register("fb")
    cert_id = site.request(["fb.gone.example.com"], account="main", fallback_accounts=["fb"])
    refused = site.refused("DELETE", "/accounts/main", 422)
    assert "still has" in refused and "certificate" in refused
    refused = site.refused("DELETE", "/accounts/fb", 422)
    assert "fb" in refused and "fall" in refused and str(cert_id) in refused
    shown = site.certificate(cert_id)  # the certificate still reads, its fallback named
    assert shown["fallback_accounts"] == ["fb"]

    site.issued(cert_id)
    site.call("DELETE", f"/certificates/{cert_id}")
    site.call("DELETE", "/accounts/fb")
    again = site.cli.register("fb")
    assert again["id"] != fallback["id"] and again["uri"] != fallback["uri"]
    assert site.call("GET", "/accounts/fb")["id"] == again["id"]
