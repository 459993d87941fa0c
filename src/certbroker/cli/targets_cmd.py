"""`certbroker target` and `certbroker deploy`: push targets, the places a certificate's
files are installed after every issuance and renewal (a directory here, or SSH hosts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from certbroker.cli.params import CertId
from certbroker.cli.state import State, console, escape, print_json, say

app = typer.Typer(
    help="Push targets (a directory here, SSH hosts): add, list, show, attach, detach, delete.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="The target's name.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _show(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None) or "-"
        console.print(f"[bold]{key:21}[/] {escape(value if value is not None else '-')}")


@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    ssh: Annotated[
        list[str] | None,
        typer.Option(
            "--ssh",
            metavar="USER@HOST[:PORT]",
            help="A host to install on over SSH/SFTP; give it once per host.",
        ),
    ] = None,
    local: Annotated[
        str | None,
        typer.Option("--local", metavar="DIR", help="Install into this directory here."),
    ] = None,
    path: Annotated[
        str | None,
        typer.Option("--path", metavar="DIR", help="SSH: the directory on the hosts."),
    ] = None,
    known_hosts: Annotated[
        Path | None,
        typer.Option(
            "--known-hosts",
            metavar="FILE",
            help="SSH: known_hosts lines with every host's key (an unknown key is refused).",
        ),
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(
            "--identity",
            metavar="KEYFILE",
            help="SSH: the private key to log in with (kept sealed; no passphrase).",
        ),
    ] = None,
    cert_file: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="The certificate and chain (default fullchain.pem)."),
    ] = None,
    key_file: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="The private key, mode --key-mode (default privkey.pem)."
        ),
    ] = None,
    combined_file: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Also key, certificate and chain in one (HAProxy)."),
    ] = None,
    pkcs12_file: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Also a PKCS#12 keystore (needs its password file)."),
    ] = None,
    pkcs12_password_file: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="The PKCS#12 password, read from this file."),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(metavar="USER[:GROUP]", help="Who owns the files (needs root there)."),
    ] = None,
    key_mode: Annotated[
        str | None,
        typer.Option(
            metavar="MODE",
            help="The mode of the files holding the key, in octal (default 600; e.g. 640).",
        ),
    ] = None,
    cert_mode: Annotated[
        str | None,
        typer.Option(
            metavar="MODE", help="The mode of the certificate file, in octal (default 644)."
        ),
    ] = None,
    reload: Annotated[
        str | None,
        typer.Option(
            metavar="CMD",
            help="Run after the files are in place (sh -c); on failure the old files are put back.",
        ),
    ] = None,
    verify: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="After the reload, check that this TLS server serves the new certificate.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Add a push target: a directory here (--local) or on SSH hosts (--ssh, --path)."""
    state: State = ctx.obj
    target = state.broker.deploy.add_target(
        name,
        ssh=ssh or (),
        local=local,
        path=path,
        known_hosts_file=known_hosts,
        identity_file=identity,
        cert_file=cert_file,
        key_file=key_file,
        combined_file=combined_file,
        pkcs12_file=pkcs12_file,
        pkcs12_password_file=pkcs12_password_file,
        owner=owner,
        key_mode=key_mode,
        cert_mode=cert_mode,
        reload=reload,
        verify=verify,
    )
    if as_json:
        print_json(target.to_json())
        return
    say(f"target {target.name} added: {target.where()}")
    say(f"attach certificates with `certbroker target attach {target.name} CERT_ID`")


@app.command("list")
def list_targets(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List the push targets and the certificates that go to each."""
    state: State = ctx.obj
    found = state.broker.deploy.list_targets()
    if as_json:
        print_json(found)
        return
    if not found:
        console.print("no targets; `certbroker target add NAME …` adds one")
        return
    for t in found:
        where = ", ".join(f"{h}:{t['path']}" for h in t["hosts"]) or t["path"]
        certs = ", ".join(str(c) for c in t["certificates"]) or "none"
        console.print(escape(f"{t['name']:20} {t['kind']:5} {where}  certificates: {certs}"))


@app.command("show")
def show(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
    """Show one push target (never its secrets)."""
    state: State = ctx.obj
    data = state.broker.deploy.show_target(name)
    if as_json:
        print_json(data)
    else:
        _show(data)


@app.command("delete")
def delete(ctx: typer.Context, name: Name) -> None:
    """Delete a push target; its certificates no longer go there (files stay in place)."""
    state: State = ctx.obj
    target = state.broker.deploy.delete_target(name)
    say(f"target {target.name} deleted")


@app.command("attach")
def attach(ctx: typer.Context, name: Name, cert_id: CertId) -> None:
    """Send a certificate to the target after every issuance and renewal (now, if issued)."""
    state: State = ctx.obj
    deployment = state.broker.deploy.attach(name, cert_id)
    say(f"certificate {cert_id} goes to target {name}")
    if deployment is not None:
        say(f"serial {deployment.serial} queued for {name} (`serve` deploys it)")


@app.command("detach")
def detach(ctx: typer.Context, name: Name, cert_id: CertId) -> None:
    """Stop sending a certificate to the target (what is still queued is cancelled)."""
    state: State = ctx.obj
    state.broker.deploy.detach(name, cert_id)
    say(f"certificate {cert_id} no longer goes to target {name}")


def deploy(
    ctx: typer.Context,
    cert_id: CertId,
    target: Annotated[
        str | None,
        typer.Option("--target", metavar="NAME", help="Only this target (default: all)."),
    ] = None,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Stop the retries of a failing deployment instead.")
    ] = False,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Deploy in this process and print the result (exit 1 on failure)."
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Deploy a certificate to its push targets now (a failing one starts over).

    Without --wait, `serve` deploys it within a second or two."""
    state: State = ctx.obj
    service = state.broker.deploy
    if cancel:
        count = service.cancel(cert_id, target)
        say(f"{count} deployment(s) of certificate {cert_id} cancelled")
        return
    queued = service.deploy_now(cert_id, target)
    if not wait:
        if as_json:
            print_json([d.to_json() for d in queued])
            return
        for d in queued:
            say(f"serial {d.serial} queued for target {d.target_name}")
        return
    results = [service.run_now(d.id) for d in queued]
    if as_json:
        print_json([d.to_json() for d in results])
    failed = False
    for d in results:
        if d.state.value == "done":
            if not as_json:
                say(f"target {d.target_name}: serial {d.serial} deployed")
            continue
        failed = True
        error = d.last_error or d.state.value
        say(f"target {d.target_name}: serial {d.serial} NOT deployed: {error}", err=True)
        if d.output_tail and not as_json:
            say(f"  output: {d.output_tail.strip()[-500:]}", err=True)
    if failed:
        raise typer.Exit(1)
