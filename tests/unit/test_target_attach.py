"""Who may attach a certificate to a push target, and what may share one (issue 24,
finding 5): a name-limited operator attached its certificate to the shared target `prod`,
and prod's fullchain.pem and privkey.pem then held the team's certificate (the
production one moved to .previous)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from certbroker.domain.access import Principal, Role
from certbroker.domain.errors import AccessDenied, Conflict
from certbroker.domain.targets import TargetFiles
from certbroker.store.repository import Repository
from tests.unit.conftest import NOW, new_certificate
from tests.unit.test_agent_store import broker_at


def test_a_target_takes_one_certificate_and_only_from_an_unlimited_operator(
    repo: Repository, tmp_path: Path
) -> None:
    broker = broker_at(repo, tmp_path, NOW)
    key = broker.ctx.sealer.seal(b"KEY")
    prod, _ = repo.create_certificate(new_certificate("www.example.com", key), NOW, None, NOW)
    team, _ = repo.create_certificate(new_certificate("dev.team.example.com", key), NOW, None, NOW)
    repo.add_target(
        name="prod", kind="local", hosts=[], path=str(tmp_path / "prod"), files=TargetFiles(),
        reload=None, verify=None, known_hosts=None, identity_sealed=None,
        pkcs12_password_sealed=None, now=NOW,
    )  # fmt: skip
    operator = Principal(name="ops", role=Role.OPERATOR, token_id=1)
    team_token = dataclasses.replace(operator, name="team", names=("*.team.example.com",))

    broker.deploy.attach("prod", prod.id, by=operator)
    with pytest.raises(AccessDenied, match="limited to"):
        broker.deploy.attach("prod", team.id, by=team_token)
    with pytest.raises(AccessDenied, match="limited to"):
        broker.deploy.detach("prod", prod.id, by=team_token)
    with pytest.raises(Conflict, match=r"already receives certificate 1 .*fullchain\.pem"):
        broker.deploy.attach("prod", team.id, by=operator)
    assert repo.certificates_of_target(repo.get_target("prod").id) == [prod.id]
