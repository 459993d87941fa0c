"""The agent at work: one outbound websocket to the broker, reconnected with jittered
backoff; HTTP-01 answered at the edge from the tokens the broker sends; certificates
installed atomically as they come (or held until `install_days_before_expiry`), never
one older than what is installed; every result reported to the broker.

With `key = "local"` the agent makes the key next to where it will live
(`<key_path>.next`, 0600) and sends a CSR: the key never leaves the gateway. The new
key replaces the old one only when the certificate for it is installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from certbroker.agent.config import AgentConfig, CertificateConfig
from certbroker.agent.edge import EdgeResponder
from certbroker.agent.state import AgentState, Held
from certbroker.crypto.csr import make_csr
from certbroker.crypto.keys import (
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from certbroker.deploy.files import InstallFailed, install_files
from certbroker.domain.agents import KeyMode
from certbroker.domain.errors import CertbrokerError
from certbroker.domain.keys import KeyType
from certbroker.domain.targets import FileSpec

log = logging.getLogger("certbroker.agent")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
HOLD_LOOK = 60.0  # seconds between looks at held-back certificates
POLL_WAIT = 25.0  # seconds a long poll waits at the broker for something new
RETRY_FIRST = 60.0  # seconds until a failed install is tried again; doubles each time
RETRY_MAX = 3600.0


class NoKey(CertbrokerError):
    """A `local` certificate arrived for a key this gateway does not have."""


def next_key_path(cert: CertificateConfig) -> Path:
    return cert.key_path.with_name(cert.key_path.name + ".next")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state = AgentState.load(config.state_file)
        self.edge = EdgeResponder(config.http01_host, config.http01_port)
        self.by_ref = {c.ref: c for c in config.certificates}
        self._ws: Any = None
        self._stop = asyncio.Event()
        self._polling = False  # long polls instead of the websocket (transport, or auto)
        self._outbox: list[dict[str, Any]] = []  # what the next poll carries
        self._seen: set[str] = set()  # what the polls brought and were handled

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.edge.start()
        log.info(
            "agent: HTTP-01 on %s:%d, broker %s, %d certificate(s)",
            self.config.http01_host,
            self.config.http01_port,
            self.config.broker,
            len(self.config.certificates),
        )
        if self.config.plain_http_elsewhere:  # insecure_http = true: said at every start
            held = [c.ref for c in self.config.certificates if c.key is KeyMode.BROKER]
            log.warning(
                "agent: the broker is reached over plain HTTP; its token%s travel%s "
                "unencrypted: use an https:// broker URL",
                " and the keys of " + ", ".join(held) if held else "",
                "" if held else "s",
            )
        holder = asyncio.get_running_loop().create_task(self._hold_loop())
        delay = BACKOFF_FIRST
        try:
            while not self._stop.is_set():
                try:
                    if await self._connect():
                        delay = BACKOFF_FIRST
                except (OSError, CertbrokerError) as exc:
                    log.warning("agent: connection to the broker: %s", exc)
                except Exception as exc:  # websockets' own errors: closed, refused, ...
                    log.warning("agent: connection to the broker ended: %s", exc)
                if self._stop.is_set():
                    break
                pause = delay * (0.5 + random.random())
                log.info("agent: connecting again in %.1f s", pause)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            holder.cancel()
            await self.edge.stop()

    def stop(self) -> None:
        self._stop.set()

    def _save(self) -> None:
        """The state file, best effort: all it holds is in memory too, so a disk full for
        a while costs only what a restart meanwhile would forget, never the install or
        the report to the broker (the file there stays as it was: AgentState.save)."""
        try:
            self.state.save()
        except OSError as exc:
            log.error("agent: cannot save the state file %s: %s; kept in memory, saved at "
                      "the next change", self.state.path, exc.strerror or exc)  # fmt: skip

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.config.websocket_url.startswith("wss:"):
            return None
        context = ssl.create_default_context()
        if self.config.ca_bundle is not None:
            context.load_verify_locations(cafile=str(self.config.ca_bundle))
        return context

    def _hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "agent": "certbroker-agent",
            "certificates": [
                {"names": list(c.names), "key": c.key.value} for c in self.config.certificates
            ],
        }

    async def _connect(self) -> bool:
        """One session over the websocket, or over long polls where the configuration
        says so, or where a websocket cannot be had (`auto`: a proxy that answers the
        upgrade with an HTTP status)."""
        from websockets.exceptions import InvalidHandshake

        if self.config.transport == "long-poll" or self._polling:
            return await self._poll_session()
        try:
            return await self._session()
        except InvalidHandshake as exc:
            if self.config.transport != "auto":
                raise
            log.warning("agent: no websocket to the broker (%s); using long polls", exc)
            self._polling = True
            return await self._poll_session()

    async def _poll_session(self) -> bool:
        """Long polls until one fails; True when the broker welcomed us."""
        import requests

        headers = {"Authorization": f"Bearer {self.config.token}"}
        verify: str | bool = str(self.config.ca_bundle) if self.config.ca_bundle else True
        self._outbox = [self._hello()]
        welcomed = False
        with requests.Session() as session:
            session.trust_env = False
            while not self._stop.is_set():
                hello = next((m for m in self._outbox if m.get("type") == "hello"), None)
                body = {
                    "hello": hello,
                    "messages": [m for m in self._outbox if m is not hello],
                    "tokens": sorted(self.edge.tokens),
                    "seen": sorted(self._seen),
                    "wait": POLL_WAIT,
                }
                self._outbox = []
                answer = await asyncio.to_thread(
                    session.post, self.config.poll_url, json=body, headers=headers,
                    timeout=POLL_WAIT + 30, verify=verify,
                )  # fmt: skip
                if answer.status_code != 200:
                    raise CertbrokerError(
                        f"the broker answered the poll with HTTP {answer.status_code}: "
                        f"{answer.text[:300]}"
                    )
                for message in answer.json():
                    if message.get("type") == "welcome":
                        welcomed = True
                        log.info("agent: polling the broker as %s", message.get("client"))
                        await self._welcome(message)
                        continue
                    await self._on(message)
                    if message.get("type") == "certificate":
                        self._seen.add(
                            f"certificate:{message['certificate_id']}:{message['serial']}"
                        )
                    elif message.get("type") == "renew":
                        self._seen.add(f"renew:{message['certificate_id']}:{message['renew_at']}")
        return welcomed

    async def _session(self) -> bool:
        """One connection, until it ends; True when the broker welcomed us."""
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.config.token}"}
        async with connect(
            self.config.websocket_url,
            additional_headers=headers,
            ssl=self._ssl(),
            open_timeout=15,
            ping_interval=20,
            max_size=4 * 1024 * 1024,
        ) as ws:
            self._ws = ws
            try:
                await self._send(self._hello())
                welcomed = False
                async for raw in ws:
                    message = json.loads(raw)
                    if message.get("type") == "welcome":
                        welcomed = True
                        log.info("agent: connected to the broker as %s", message.get("client"))
                        await self._welcome(message)
                    else:
                        await self._on(message)
                    if self._stop.is_set():
                        break
                return welcomed
            finally:
                self._ws = None

    async def _send(self, message: dict[str, Any]) -> None:
        if self._polling or self.config.transport == "long-poll":
            self._outbox.append(message)  # goes with the next poll
        elif self._ws is not None:
            await self._ws.send(json.dumps(message))

    # -- what the broker says ---------------------------------------------------------------

    async def _welcome(self, message: dict[str, Any]) -> None:
        for answer in message.get("certificates", []):
            ref = ",".join(sorted(answer.get("names", [])))
            cert = self.by_ref.get(ref)
            if cert is None:
                continue
            if "error" in answer:
                log.error("agent: %s: the broker refuses: %s", ref, answer["error"])
            elif answer.get("need_csr"):
                await self._send_csr(cert, fresh=False)
            elif answer.get("certificate_id") is not None:
                held = self.state.of(ref)
                if held.certificate_id != answer["certificate_id"]:
                    held.certificate_id = answer["certificate_id"]
                    self._save()

    async def _on(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "tokens":
            tokens = message.get("tokens") or {}
            self.edge.tokens = dict(tokens)
            await self._send({"type": "ack", "tokens": sorted(tokens)})
        elif kind == "certificate":
            await self._deliver(message)
        elif kind == "renew":
            cert = self._config_of(message.get("names", []), message.get("certificate_id"))
            if cert is not None and cert.key is KeyMode.LOCAL:
                log.info("agent: %s is due for renewal: sending a fresh CSR", cert.ref)
                await self._send_csr(cert, fresh=True)
        elif kind == "csr":
            request = message.get("request", {})
            cert = self._config_of(request.get("names", []), None)
            if cert is not None and request.get("certificate_id"):
                self.state.of(cert.ref).certificate_id = request["certificate_id"]
                self._save()
        elif kind == "error":
            log.error("agent: the broker says: %s (%s)", message.get("detail"),
                      message.get("status"))  # fmt: skip

    def _config_of(self, names: list[str], cert_id: int | None) -> CertificateConfig | None:
        cert = self.by_ref.get(",".join(sorted(names)))
        if cert is None and cert_id is not None:
            for ref, held in self.state.certificates.items():
                if held.certificate_id == cert_id and ref in self.by_ref:
                    return self.by_ref[ref]
        return cert

    # -- keys and CSRs ------------------------------------------------------------------------

    async def _send_csr(self, cert: CertificateConfig, fresh: bool) -> None:
        """A CSR for `cert` with the key waiting in `<key_path>.next` (made now when there
        is none, or when `fresh` and the one there is already in use)."""
        key = await asyncio.to_thread(self._next_key, cert, fresh)
        csr = make_csr(key, list(cert.names))
        await self._send({"type": "csr", "csr": csr.decode()})

    def _next_key(self, cert: CertificateConfig, fresh: bool) -> PrivateKey:
        path = next_key_path(cert)
        if path.exists() and not fresh:
            return load_private_key(path.read_bytes(), str(path))
        key = generate_private_key(KeyType.EC_P256)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(path.name + ".tmp")
        temp.unlink(missing_ok=True)
        temp.write_bytes(b"")
        temp.chmod(0o600)
        temp.write_bytes(private_key_to_pem(key))
        temp.replace(path)
        return key

    def _key_for(self, cert: CertificateConfig, leaf: x509.Certificate) -> tuple[bytes, bool]:
        """The local key the certificate is for: the waiting one, else the installed one;
        (its PEM, whether it is the waiting one)."""
        for path, waiting in ((next_key_path(cert), True), (cert.key_path, False)):
            if path.exists():
                data = path.read_bytes()
                if key_matches_certificate(load_private_key(data, str(path)), leaf):
                    return data, waiting
        raise NoKey(f"no key here matches the certificate for {cert.ref}")

    # -- installing ---------------------------------------------------------------------------

    async def _deliver(self, message: dict[str, Any]) -> None:
        cert = self._config_of(message.get("names", []), message.get("certificate_id"))
        if cert is None:
            log.warning("agent: certificate %s is not in the configuration; ignored",
                        message.get("certificate_id"))  # fmt: skip
            return
        held = self.state.of(cert.ref)
        serial = str(message.get("serial"))
        if held.serial == serial:  # installed before a restart: say so again
            await self._report(message, ok=True, reload_status=None, tail="", error=None)
            return
        why, message = self._checked(cert, held, message)
        if why is not None:
            log.warning("agent: %s: %s", cert.ref, why)
            await self._report(message, ok=False, reload_status=None, tail="", error=why)
            return
        if self._held_back(cert, held):
            held.waiting = message
            self._save()
            log.info("agent: %s: serial %s held until %s day(s) before the installed one "
                     "expires", cert.ref, serial, cert.install_days_before_expiry)  # fmt: skip
            return
        await self._install(cert, held, message)

    def _checked(
        self, cert: CertificateConfig, held: Held, message: dict[str, Any]
    ) -> tuple[str | None, dict[str, Any]]:
        """What the delivered certificate itself says, not the message about it: its
        names must be this entry's, and it must be no older than the one installed (by
        the state file, and by the installed file, which outlives a lost state file).
        (Why it is refused, or None; the message with the certificate's own serial and
        dates.)"""
        serial = str(message.get("serial"))
        try:
            leaf = x509.load_pem_x509_certificates(str(message.get("chain", "")).encode())[0]
        except (ValueError, IndexError):
            return f"refused: serial {serial} is not a PEM certificate", message
        own_serial = format(leaf.serial_number, "x")
        checked = message | {
            "serial": own_serial,
            "not_before": leaf.not_valid_before_utc.isoformat(),
            "not_after": leaf.not_valid_after_utc.isoformat(),
        }
        names = sorted(_dns_names(leaf))
        if names != sorted(n.lower() for n in cert.names):
            return (
                f"refused: serial {own_serial} is for {', '.join(names) or 'no name'}, not "
                f"{', '.join(cert.names)} as configured for this entry",
                checked,
            )
        installed = _installed_not_before(cert, held)
        if installed is not None and leaf.not_valid_before_utc < installed[0]:
            return (
                f"refused: serial {own_serial} is older than the installed {installed[1]} "
                "(a replay, or a broker gone back in time)",
                checked,
            )
        return None, checked

    def _held_back(self, cert: CertificateConfig, held: Held) -> bool:
        days = cert.install_days_before_expiry
        if days is None or held.not_after is None:
            return False
        left = datetime.fromisoformat(held.not_after) - datetime.now(UTC)
        return left > timedelta(days=days)

    async def _hold_loop(self) -> None:
        while True:
            await asyncio.sleep(HOLD_LOOK)
            await self.install_waiting(datetime.now(UTC))

    async def install_waiting(self, now: datetime) -> None:
        """Install what waits: held back until its install time, or failed before and
        due to be tried again."""
        for ref, held in list(self.state.certificates.items()):
            cert = self.by_ref.get(ref)
            if cert is None or not held.waiting or self._held_back(cert, held):
                continue
            if held.retry_at is not None and datetime.fromisoformat(held.retry_at) > now:
                continue
            await self._install(cert, held, held.waiting)

    def _failed(self, held: Held, message: dict[str, Any]) -> None:
        """Try the delivery again later (1 min, doubling up to an hour), from the state
        file, so a fixed reload command or a freed disk needs no new serial."""
        held.failures += 1
        pause = min(RETRY_FIRST * 2 ** (held.failures - 1), RETRY_MAX)
        held.retry_at = (datetime.now(UTC) + timedelta(seconds=pause)).isoformat()
        held.waiting = message
        self._save()

    async def _install(self, cert: CertificateConfig, held: Held, message: dict[str, Any]) -> None:
        try:
            files, waiting_key = await asyncio.to_thread(self._files, cert, message)
            result = await asyncio.to_thread(install_files, files, cert.reload)
        except NoKey as exc:  # the key was lost (a wiped gateway): ask for a new certificate
            log.error("agent: %s: %s; sending a CSR for a new key", cert.ref, exc)
            await self._report(message, ok=False, reload_status=None, tail="", error=str(exc))
            await self._send_csr(cert, fresh=True)
            return
        except InstallFailed as exc:
            log.error("agent: %s: %s", cert.ref, exc)
            self._failed(held, message)
            await self._report(message, ok=False, reload_status=exc.result.reload_status,
                               tail=exc.result.output_tail, error=str(exc))  # fmt: skip
            return
        except (CertbrokerError, OSError, ValueError) as exc:
            log.error("agent: %s: cannot install serial %s: %s", cert.ref,
                      message.get("serial"), exc)  # fmt: skip
            self._failed(held, message)
            await self._report(message, ok=False, reload_status=None, tail="", error=str(exc))
            return
        held.certificate_id = message["certificate_id"]
        held.serial = str(message["serial"])
        held.not_before = message["not_before"]
        held.not_after = message.get("not_after")
        held.waiting = None
        held.failures, held.retry_at = 0, None
        self._save()
        if waiting_key:
            next_key_path(cert).unlink(missing_ok=True)
        log.info("agent: %s: installed serial %s", cert.ref, held.serial)
        await self._report(message, ok=True, reload_status=result.reload_status,
                           tail=result.output_tail, error=None)  # fmt: skip

    def _files(
        self, cert: CertificateConfig, message: dict[str, Any]
    ) -> tuple[list[FileSpec], bool]:
        from certbroker.crypto.export import ExportBundle, render_export
        from certbroker.domain.keys import ExportFormat

        chain = message["chain"].encode()
        leaf = x509.load_pem_x509_certificates(chain)[0]
        if message.get("key_mode") == KeyMode.BROKER.value:
            key_pem, waiting = str(message["key"]).encode(), False
            if not key_matches_certificate(load_private_key(key_pem, "the broker's key"), leaf):
                raise CertbrokerError("the key the broker sent does not match its certificate")
        else:
            key_pem, waiting = self._key_for(cert, leaf)
        leaf_pem, _, rest = chain.partition(b"-----END CERTIFICATE-----")
        bundle = ExportBundle(
            cert_pem=leaf_pem + b"-----END CERTIFICATE-----\n",
            chain_pem=rest.lstrip(),
            key_pem=key_pem,
            alias=cert.names[0],
        )
        owner = cert.owner
        for path in (cert.cert_path, cert.key_path, cert.combined_path, cert.pkcs12_path):
            if path is not None:  # where the configuration says; made on first install
                path.parent.mkdir(parents=True, exist_ok=True)
        files = [
            FileSpec(cert.cert_path, chain, 0o644, owner),
            FileSpec(cert.key_path, key_pem, cert.mode, owner),
        ]
        if cert.combined_path is not None:
            [(_, combined, _)] = render_export(bundle, ExportFormat.COMBINED)
            files.append(FileSpec(cert.combined_path, combined, cert.mode, owner))
        if cert.pkcs12_path is not None:
            [(_, p12, _)] = render_export(bundle, ExportFormat.PKCS12, cert.pkcs12_password)
            files.append(FileSpec(cert.pkcs12_path, p12, cert.mode, owner))
        return files, waiting

    async def _report(
        self,
        message: dict[str, Any],
        *,
        ok: bool,
        reload_status: int | None,
        tail: str,
        error: str | None,
    ) -> None:
        await self._send(
            {
                "type": "installed",
                "certificate_id": message["certificate_id"],
                "serial": str(message["serial"]),
                "not_after": message.get("not_after"),
                "ok": ok,
                "reload_status": reload_status,
                "output_tail": tail,
                "error": error,
            }
        )


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n).lower() for n in san.get_values_for_type(x509.DNSName)]


def _installed_not_before(
    cert: CertificateConfig, held: Held
) -> tuple[datetime, str | None] | None:
    """The newest not-before of what is installed for the entry, and its serial: the
    state file's and the certificate file's (read when the state file was lost)."""
    found: list[tuple[datetime, str | None]] = []
    if held.not_before:
        found.append((datetime.fromisoformat(held.not_before), held.serial))
    with contextlib.suppress(OSError, ValueError, IndexError):
        leaf = x509.load_pem_x509_certificates(cert.cert_path.read_bytes())[0]
        found.append((leaf.not_valid_before_utc, format(leaf.serial_number, "x")))
    return max(found, key=lambda item: item[0], default=None)
