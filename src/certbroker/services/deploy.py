"""Push targets: where certificates go after every issuance and renewal (`Broker.deploy`).

Targets are kept with their secrets sealed; a certificate's targets get a deployment
queued with every certificate that arrives (in the same transaction, store_issued).
`DeployWorker` (a thread of `serve`) takes due deployments under a lease, builds the
files from the stored certificate and key, hands them to the target's Deployer and
records what happened: an event either way; a failure raises the deployment's alarm and
is tried again (30 s, 1 min, 2, 4 … up to an hour) until it works or a person acts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from certbroker.domain.access import Principal
from certbroker.domain.audit import SECRET
from certbroker.domain.errors import (
    AccessDenied,
    CertbrokerError,
    Conflict,
    LeaseLost,
    NotFoundError,
    StoreUnavailable,
    UsageError,
)
from certbroker.domain.keys import ExportFormat, KeyPolicy
from certbroker.domain.models import Certificate
from certbroker.domain.targets import (
    DEFAULT_CERT_MODE,
    DEFAULT_KEY_MODE,
    DEPLOY_RETRY_FIRST,
    LOCAL,
    SSH,
    DeployFailed,
    Deployment,
    Target,
    TargetFiles,
    check_file_name,
    check_mode,
    check_owner,
    check_target_name,
    deploy_retry_delay,
    parse_host_port,
    parse_ssh_host,
)
from certbroker.ports import Deployer, DeploySecrets
from certbroker.services import audit
from certbroker.services.common import ServiceContext
from certbroker.services.leases import make_owner
from certbroker.services.periodic import Periodic

log = logging.getLogger("certbroker.deploy")

LEASE = timedelta(minutes=10)  # a deployment runs its reload on every host (120 s each)
VERIFY_TRIES = 10  # --verify: a reload takes a moment; asked once a second
MAX_FILE = 1_000_000  # bytes of a known_hosts, identity or password file


def _read(path: Path, option: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE:
            raise UsageError(f"{option} {path}: far too large for what it should hold")
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it ({exc.strerror})") from None


class DeployService:
    def __init__(
        self,
        ctx: ServiceContext,
        deployers: Mapping[str, Deployer],
        served_fingerprint: Callable[[str, int, str], str],
        retry_first: timedelta = DEPLOY_RETRY_FIRST,
        verify_pause: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.repo = ctx.repo
        self.deployers = deployers
        self.served_fingerprint = served_fingerprint
        self.retry_first = retry_first
        self.verify_pause = verify_pause

    # -- targets ---------------------------------------------------------------------------

    def add_target(
        self,
        name: str,
        *,
        ssh: Sequence[str] = (),
        local: str | None = None,
        path: str | None = None,
        known_hosts_file: Path | None = None,
        identity_file: Path | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        combined_file: str | None = None,
        pkcs12_file: str | None = None,
        pkcs12_password_file: Path | None = None,
        owner: str | None = None,
        key_mode: str | None = None,
        cert_mode: str | None = None,
        reload: str | None = None,
        verify: str | None = None,
        known_hosts: str | None = None,
        identity_pem: bytes | None = None,
        pkcs12_password: str | None = None,
    ) -> Target:
        """Check everything (files read now, hosts in known_hosts, the identity usable),
        then store the target with its secrets sealed. Nothing is stored on an error.
        The API gives the files' contents instead (`known_hosts`, `identity_pem`,
        `pkcs12_password`)."""
        for given, what in ((known_hosts, "known_hosts"), (identity_pem, "identity"),
                            (pkcs12_password, "pkcs12_password")):  # fmt: skip
            if given is not None and len(given) > MAX_FILE:
                raise UsageError(f"{what}: far too large for what it should hold")
        check_target_name(name)
        if bool(ssh) == (local is not None):
            raise UsageError("give either --ssh user@host[:port] (one or more) or --local DIR")
        if ssh:
            kind = SSH
            hosts = tuple(dict.fromkeys(parse_ssh_host(h) for h in ssh))
            if not path:
                raise UsageError("an SSH target needs --path DIR: the directory on the hosts")
            if (known_hosts_file is None and known_hosts is None) or (
                identity_file is None and identity_pem is None
            ):
                raise UsageError(
                    "an SSH target needs --known-hosts FILE (the hosts' keys) and "
                    "--identity KEYFILE (the private key certbroker logs in with)"
                )
            directory = path
        else:
            assert local is not None
            kind, hosts = LOCAL, ()
            if path:
                raise UsageError("--path is for SSH targets; a local target's directory is --local")
            directory = local
        if reload is not None and not reload.strip():
            raise UsageError("--reload is empty; leave it out when nothing needs reloading")
        files = TargetFiles(
            cert_file=check_file_name(cert_file, "--cert-file") if cert_file else "fullchain.pem",
            key_file=check_file_name(key_file, "--key-file") if key_file else "privkey.pem",
            combined_file=check_file_name(combined_file, "--combined-file")
            if combined_file
            else None,
            pkcs12_file=check_file_name(pkcs12_file, "--pkcs12-file") if pkcs12_file else None,
            owner=check_owner(owner) if owner else None,
            key_mode=check_mode(key_mode, "--key-mode") if key_mode else DEFAULT_KEY_MODE,
            cert_mode=check_mode(cert_mode, "--cert-mode") if cert_mode else DEFAULT_CERT_MODE,
        )
        names = files.names()
        if len(set(names)) != len(names):
            raise UsageError(f"two files of the target have the same name: {', '.join(names)}")
        password = pkcs12_password.encode() if pkcs12_password is not None else None
        if pkcs12_password_file is not None:
            password = _read(pkcs12_password_file, "--pkcs12-password-file").strip()
            if not password:
                raise UsageError(f"--pkcs12-password-file {pkcs12_password_file} is empty")
        if (pkcs12_file is None) != (password is None):
            raise UsageError("--pkcs12-file and --pkcs12-password-file go together")
        checked_verify = parse_host_port(verify) if verify else None
        if identity_file is not None:
            identity_pem = _read(identity_file, "--identity")
        if known_hosts_file is not None:
            known_hosts = _read(known_hosts_file, "--known-hosts").decode(errors="replace")
        secrets = DeploySecrets(identity_pem=identity_pem, known_hosts=known_hosts)
        target = Target(
            id=0,
            name=name,
            kind=kind,
            path=directory,
            files=files,
            reload=reload,
            verify=checked_verify,
            hosts=hosts,
        )
        self.deployers[kind].check(target, secrets)
        seal = self.ctx.sealer.seal
        added = self.repo.add_target(
            name=name,
            kind=kind,
            hosts=hosts,
            path=str(Path(directory)) if kind == LOCAL else directory,
            files=files,
            reload=reload,
            verify=checked_verify,
            known_hosts=secrets.known_hosts,
            identity_sealed=seal(secrets.identity_pem) if secrets.identity_pem else None,
            pkcs12_password_sealed=seal(password) if password else None,
            now=self.ctx.clock(),
        )
        audit.record(
            self.ctx,
            "target.add",
            "target",
            added.name,
            {
                **added.to_json(),
                "identity": SECRET if identity_pem else None,
                "pkcs12_password": SECRET if password else None,
            },
        )
        return added

    def get_target(self, name: str) -> Target:
        return self.repo.get_target(name)

    def list_targets(self, by: Principal | None = None) -> list[dict[str, Any]]:
        """The targets `by` may see (None: the local CLI, every one)."""
        return [self._describe(t) for t in self.repo.list_targets() if self._may_see(t, by)]

    def show_target(self, name: str, by: Principal | None = None) -> dict[str, Any]:
        target = self.repo.get_target(name)
        if not self._may_see(target, by):
            raise NotFoundError(f"no target named {name!r}; `certbroker target list` shows them")
        return self._describe(target)

    def _may_see(self, target: Target, by: Principal | None) -> bool:
        """A name-limited caller sees a target only when it holds certificates, every one
        within its names: a target's hosts, path and reload command are configuration."""
        if by is None or not by.names:
            return True
        held = self.repo.certificates_of_target(target.id)
        return bool(held) and all(
            by.may_see(self.repo.get_certificate(cert_id).names) for cert_id in held
        )

    def _describe(self, target: Target) -> dict[str, Any]:
        data = target.to_json()
        data["certificates"] = self.repo.certificates_of_target(target.id)
        data["identity_kept"] = target.has_identity
        data["pkcs12_password_kept"] = target.has_pkcs12_password
        return data

    def delete_target(self, name: str) -> Target:
        target = self.repo.get_target(name)
        self.repo.delete_target(target.id)
        audit.record(self.ctx, "target.delete", "target", target.name, target.to_json())
        return target

    # -- certificates and their targets ----------------------------------------------------

    def attach(self, name: str, cert_id: int, by: Principal | None = None) -> Deployment | None:
        """The certificate goes to the target from now on; an issued one is queued now.
        A target holds one certificate (its files have one set of names), and only a
        caller without a name limit attaches or detaches (`by`; None: the local CLI)."""
        _may_change_targets(by)
        target = self.repo.get_target(name)
        cert = self.repo.get_certificate(cert_id)
        others = [i for i in self.repo.certificates_of_target(target.id) if i != cert_id]
        if others:
            spec = target.files
            files = ", ".join(
                f
                for f in (spec.cert_file, spec.key_file, spec.combined_file, spec.pkcs12_file)
                if f
            )
            raise Conflict(
                f"target {name!r} already receives certificate {others[0]} and its files "
                f"({files} in {target.path}) would be overwritten by certificate {cert_id}'s; "
                f"add a target with another --path or other file names for it, or detach "
                f"certificate {others[0]} first"
            )
        if cert.key_policy is KeyPolicy.CSR or (
            cert.cert_pem is not None and self.repo.certificate_key_sealed(cert_id) is None
        ):
            raise UsageError(
                f"certificate {cert_id}'s private key is not held here (its device keeps it), "
                "so certbroker cannot install it anywhere; the device installs it itself"
            )
        deployment_id = self.repo.attach_target(cert_id, target.id, self.ctx.clock())
        audit.record(self.ctx, "target.attach", "target", target.name, {"certificate_id": cert_id})
        return None if deployment_id is None else self.repo.get_deployment(deployment_id)

    def detach(self, name: str, cert_id: int, by: Principal | None = None) -> None:
        _may_change_targets(by)
        target = self.repo.get_target(name)
        self.repo.get_certificate(cert_id)
        if not self.repo.detach_target(cert_id, target.id, self.ctx.clock()):
            raise UsageError(f"certificate {cert_id} does not go to target {name!r}")
        audit.record(self.ctx, "target.detach", "target", target.name, {"certificate_id": cert_id})

    def _targets(self, cert_id: int, name: str | None) -> list[Target]:
        attached = self.repo.targets_of(cert_id)
        if name is None:
            if not attached:
                raise UsageError(
                    f"certificate {cert_id} has no push targets; "
                    f"`certbroker target attach NAME {cert_id}` adds one"
                )
            return attached
        target = self.repo.get_target(name)
        if target.id not in {t.id for t in attached}:
            raise UsageError(
                f"certificate {cert_id} does not go to target {name!r}; "
                f"`certbroker target attach {name} {cert_id}` first"
            )
        return [target]

    def deploy_now(self, cert_id: int, target: str | None = None) -> list[Deployment]:
        """Queue the current certificate for its targets (or one) now; a failing
        deployment starts its backoff again."""
        cert = self.repo.get_certificate(cert_id)
        chosen = self._targets(cert_id, target)
        if cert.cert_pem is None or cert.serial is None:
            raise UsageError(
                f"certificate {cert_id} has not been issued ({cert.status.value}); it is "
                "deployed by itself when it arrives"
            )
        now = self.ctx.clock()
        found = []
        for t in chosen:
            deployment_id = self.repo.queue_deployment(cert_id, t.id, cert.serial, now)
            if deployment_id is not None:
                found.append(self.repo.get_deployment(deployment_id))
        return found

    def cancel(self, cert_id: int, target: str | None = None) -> int:
        """Stop the retries of what is open (the alarm goes with them)."""
        self.repo.get_certificate(cert_id)
        now = self.ctx.clock()
        return sum(
            self.repo.cancel_deployments(cert_id, t.id, now) for t in self._targets(cert_id, target)
        )

    def of_certificate(self, cert_id: int) -> list[dict[str, Any]]:
        """Each target of the certificate and its newest deployment (for `cert show`)."""
        latest = {d.target_id: d for d in self.repo.latest_deployments(cert_id)}
        found = []
        for t in self.repo.targets_of(cert_id):
            d = latest.get(t.id)
            found.append(
                {"target": t.name, "where": t.where(), "deployment": d.to_json() if d else None}
            )
        return found

    # -- running deployments ---------------------------------------------------------------

    def run_due(self, owner: str | None = None, limit: int = 100) -> list[Deployment]:
        """Every deployment due now, one after the other (each under its lease)."""
        owner = owner or make_owner("deploy")
        done = []
        for _ in range(limit):
            now = self.ctx.clock()
            deployment_id = self.repo.claim_next_deployment(owner, now, now + LEASE)
            if deployment_id is None:
                break
            done.append(self._run_claimed(deployment_id, owner))
        return done

    def run_now(self, deployment_id: int) -> Deployment:
        """Run this one deployment in this process (`deploy --wait`)."""
        owner = make_owner("deploy-wait")
        now = self.ctx.clock()
        if not self.repo.claim_deployment(deployment_id, owner, now, now + LEASE):
            current = self.repo.get_deployment(deployment_id)
            if current.state.open:
                raise UsageError(
                    f"deployment {deployment_id} to {current.target_name} is running in "
                    "another process; `certbroker cert show` tells how it ended"
                )
            return current
        return self._run_claimed(deployment_id, owner)

    def _run_claimed(self, deployment_id: int, owner: str) -> Deployment:
        deployment = self.repo.get_deployment(deployment_id)
        target = self.repo.get_target(deployment.target_id)
        try:
            cert = self.repo.get_certificate(deployment.certificate_id)
            message, tail = self._deploy(target, cert)
        except StoreUnavailable:
            raise  # not the target's failure: the deployment is taken again after the outage
        except (CertbrokerError, OSError) as exc:
            error = str(exc)
            result = getattr(exc, "result", None)
            tail = getattr(result, "output_tail", "") or ""
            pause = deploy_retry_delay(deployment.attempts + 1, first=self.retry_first)
            now = self.ctx.clock()
            log.warning("deployment %d to %s failed: %s", deployment_id, target.name, error)
            try:
                self.repo.fail_deployment(deployment_id, owner, now, error, tail, now + pause)
            except LeaseLost:
                log.warning("deployment %d: another worker took it over", deployment_id)
        else:
            try:
                self.repo.finish_deployment(deployment_id, owner, self.ctx.clock(), message, tail)
            except LeaseLost:
                log.warning("deployment %d: another worker took it over", deployment_id)
            log.info("deployment %d to %s: %s", deployment_id, target.name, message)
        return self.repo.get_deployment(deployment_id)

    def _deploy(self, target: Target, cert: Certificate) -> tuple[str, str]:
        if cert.cert_pem is None:
            raise DeployFailed(f"certificate {cert.id} has no certificate to deploy")
        identity_sealed, password_sealed = self.repo.target_secrets_sealed(target.id)
        unseal = self.ctx.sealer.unseal
        password = unseal(password_sealed).decode() if password_sealed else None
        files = self._files(target, cert, password)
        secrets = DeploySecrets(
            identity_pem=unseal(identity_sealed) if identity_sealed else None,
            known_hosts=target.known_hosts,
        )
        result = self.deployers[target.kind].deploy(target, files, secrets)
        message = f"serial {cert.serial} deployed to {target.where()}"
        if target.reload:
            message += ", reloaded"
        if target.verify is not None:
            self._verify(target, cert)
            message += f", {target.verify[0]}:{target.verify[1]} serves it"
        return message, result.output_tail

    def _verify(self, target: Target, cert: Certificate) -> None:
        assert target.verify is not None
        host, port = target.verify
        served = ""
        problem: DeployFailed | None = None
        for attempt in range(VERIFY_TRIES):
            if attempt:
                time.sleep(self.verify_pause)
            try:
                served = self.served_fingerprint(host, port, cert.names[0])
            except DeployFailed as exc:
                problem = exc
                continue
            problem = None
            if served == cert.fingerprint_sha256:
                return
        if problem is not None:
            raise problem
        raise DeployFailed(
            f"--verify {host}:{port} still serves another certificate (SHA-256 "
            f"{served[:16]}…, not {(cert.fingerprint_sha256 or '')[:16]}…) after the "
            "reload; check that the reload command makes the server read the new files"
        )

    def _files(self, target: Target, cert: Certificate, password: str | None) -> list[Any]:
        from certbroker.crypto.export import ExportBundle, render_export
        from certbroker.domain.targets import FileSpec

        sealed = self.repo.certificate_key_sealed(cert.id)
        if sealed is None:
            raise DeployFailed(f"certificate {cert.id}'s key is not held here; nothing to deploy")
        assert cert.cert_pem is not None
        bundle = ExportBundle(
            cert_pem=cert.cert_pem.encode(),
            chain_pem=(cert.chain_pem or "").encode(),
            key_pem=self.ctx.sealer.unseal(sealed),
            alias=cert.common_name,
        )
        pem = {name: data for name, data, _ in render_export(bundle, ExportFormat.PEM)}
        spec = target.files
        base = Path(target.path)
        owner = spec.owner
        files = [FileSpec(base / spec.cert_file, pem["fullchain.pem"], spec.cert_mode, owner)]
        if spec.key_file:
            files.append(FileSpec(base / spec.key_file, pem["privkey.pem"], spec.key_mode, owner))
        if spec.combined_file:
            _, data, _ = render_export(bundle, ExportFormat.COMBINED)[0]
            files.append(FileSpec(base / spec.combined_file, data, spec.key_mode, owner))
        if spec.pkcs12_file:
            if not password:
                raise DeployFailed(f"target {target.name} keeps no PKCS#12 password")
            _, data, _ = render_export(bundle, ExportFormat.PKCS12, password)[0]
            files.append(FileSpec(base / spec.pkcs12_file, data, spec.key_mode, owner))
        return files


def _may_change_targets(by: Principal | None) -> None:
    """A push target serves whatever is attached to it and has no names of its own, so a
    caller limited to names may not change what goes there."""
    if by is not None and by.names:
        raise AccessDenied(
            f"{by.kind} {by.name!r} is limited to {', '.join(by.names)}; a push target has "
            "no names of its own, so only an operator without a name limit attaches or "
            "detaches certificates"
        )


class DeployWorker(Periodic):
    """Runs due deployments every `interval` seconds until stopped (a thread in `serve`)."""

    def __init__(self, service: DeployService, interval: float = 1.0) -> None:
        super().__init__("deploy", service.run_due, interval, log)
