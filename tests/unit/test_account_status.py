"""One reading of an ACME account's status, whichever command met it (register, import,
refresh): only `valid` may order; `deactivated` and `revoked` (RFC 8555 7.1.2) may not."""

from __future__ import annotations

import pytest

from certbroker.domain.models import AccountStatus


@pytest.mark.parametrize(
    ("at_the_ca", "stored"),
    [
        ("valid", AccountStatus.VALID),
        ("deactivated", AccountStatus.DEACTIVATED),
        ("revoked", AccountStatus.DEACTIVATED),
        ("something-new", AccountStatus.DEACTIVATED),
    ],
)
def test_the_cas_account_status_is_read_one_way(at_the_ca: str, stored: AccountStatus) -> None:
    assert AccountStatus.from_ca(at_the_ca) is stored
