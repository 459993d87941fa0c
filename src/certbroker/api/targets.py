"""Push targets over the API: the same service as `certbroker target` and
`certbroker deploy`. Adding or deleting a target is an admin's: a target writes files
and runs a command on a host. Attaching, detaching and "deploy now" are an operator's,
for the certificates the operator's token may see."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from certbroker.api.auth import Admin, BrokerDep, Operator, Reader, unlimited
from certbroker.api.certificates import CertId, visible
from certbroker.api.problems import ERRORS
from certbroker.domain.access import Action, Principal

router = APIRouter(tags=["push targets"], responses=ERRORS)
TargetName = Annotated[str, Path(min_length=1, max_length=100)]
Short = Annotated[str, Field(min_length=1, max_length=255)]


class TargetBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Short
    ssh: Annotated[list[Short], Field(max_length=100)] = Field(
        [], description="user@host[:port], one per host; or `local`."
    )
    local: Short | None = Field(None, description="A directory on the broker's host.")
    path: Short | None = Field(None, description="SSH: the directory on the hosts.")
    known_hosts: Annotated[str, Field(max_length=1_000_000)] | None = Field(
        None, description="SSH: the hosts' keys, as in a known_hosts file (required)."
    )
    identity: Annotated[str, Field(max_length=1_000_000)] | None = Field(
        None, description="SSH: the private key to log in with, PEM or OpenSSH (kept sealed)."
    )
    cert_file: Short | None = None
    key_file: Short | None = None
    combined_file: Short | None = None
    pkcs12_file: Short | None = None
    pkcs12_password: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    owner: Short | None = None
    key_mode: Short | None = Field(
        None, description="Mode of the files holding the key, octal (default 600; e.g. 640)."
    )
    cert_mode: Short | None = Field(
        None, description="Mode of the certificate file, octal (default 644)."
    )
    reload: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    verify: Short | None = Field(None, description="host:port serving the certificate (TLS).")


class Attach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    certificate_id: int = Field(ge=1, le=2**31 - 1)


class DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Short | None = Field(None, description="Only this target; default: all of them.")


@router.get("/targets", response_model=list[dict[str, Any]])
def list_targets(principal: Operator, broker: BrokerDep) -> list[dict[str, Any]]:
    """Targets, what they get and how (never their secrets): configuration, so operators
    and admins; a name-limited one sees the targets of its certificates only."""
    return broker.deploy.list_targets(by=principal)


@router.post("/targets", status_code=201, response_model=dict[str, Any])
def add_target(body: TargetBody, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """A new target; everything is checked first (the hosts in known_hosts, the key
    usable), nothing is stored on an error."""
    target = broker.deploy.add_target(
        body.name,
        ssh=body.ssh,
        local=body.local,
        path=body.path,
        known_hosts=body.known_hosts,
        identity_pem=body.identity.encode() if body.identity else None,
        cert_file=body.cert_file,
        key_file=body.key_file,
        combined_file=body.combined_file,
        pkcs12_file=body.pkcs12_file,
        pkcs12_password=body.pkcs12_password,
        owner=body.owner,
        key_mode=body.key_mode,
        cert_mode=body.cert_mode,
        reload=body.reload,
        verify=body.verify,
    )
    return broker.deploy.show_target(target.name)


@router.get("/targets/{name}", response_model=dict[str, Any])
def show_target(name: TargetName, principal: Operator, broker: BrokerDep) -> dict[str, Any]:
    return broker.deploy.show_target(name, by=principal)


@router.delete("/targets/{name}", response_model=dict[str, Any])
def delete_target(name: TargetName, _p: Admin, broker: BrokerDep) -> dict[str, Any]:
    """Forget the target (the files it holds stay where they are)."""
    target = broker.deploy.delete_target(name)
    return {"name": target.name, "deleted": True}


# A target's files are shared by whatever goes to it: only an operator without a name
# limit attaches and detaches (services/deploy.py says the same to every entry point).
TargetChanger = Annotated[
    Principal,
    Depends(unlimited(Action.REQUEST, "a target's files are shared by what goes to it")),
]


@router.post("/targets/{name}/attach", response_model=dict[str, Any])
def attach(
    name: TargetName, body: Attach, principal: TargetChanger, broker: BrokerDep
) -> dict[str, Any]:
    """The certificate goes to this target from now on; its current one at once."""
    visible(broker, principal, body.certificate_id)
    deployment = broker.deploy.attach(name, body.certificate_id, by=principal)
    return {"target": name, "certificate_id": body.certificate_id,
            "queued": deployment is not None}  # fmt: skip


@router.post("/targets/{name}/detach", response_model=dict[str, Any])
def detach(
    name: TargetName, body: Attach, principal: TargetChanger, broker: BrokerDep
) -> dict[str, Any]:
    visible(broker, principal, body.certificate_id)
    broker.deploy.detach(name, body.certificate_id, by=principal)
    return {"target": name, "certificate_id": body.certificate_id, "detached": True}


@router.post("/certificates/{cert_id}/deploy", status_code=202, response_model=dict[str, Any])
def deploy_now(
    cert_id: CertId, body: DeployBody, principal: Operator, broker: BrokerDep
) -> dict[str, Any]:
    """Deploy now to the certificate's targets (a failing one starts over); `serve`
    does the work; follow `GET /certificates/{id}/targets`."""
    visible(broker, principal, cert_id)
    queued = broker.deploy.deploy_now(cert_id, body.target)
    return {"certificate_id": cert_id, "queued": len(queued)}


@router.get("/certificates/{cert_id}/targets", response_model=list[dict[str, Any]])
def certificate_targets(
    cert_id: CertId, principal: Reader, broker: BrokerDep
) -> list[dict[str, Any]]:
    """The certificate's targets and their last deployment (serial, state, error)."""
    visible(broker, principal, cert_id)
    return broker.deploy.of_certificate(cert_id)
