"""A page of certificates as the API and console ask for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from certbroker.domain.models import CertificateStatus

SORTS = ("id", "expires", "name", "created")  # what a page may be sorted by
NAME_KEY_LENGTH = 200  # "name" sorts by this many characters of the names (JSON)


@dataclass(frozen=True)
class PageQuery:
    status: CertificateStatus | None = None
    search: str | None = None  # a part of one of its names, or of its label
    expiring_within: timedelta | None = None
    sort: str = "id"  # one of SORTS
    descending: bool = False
    # Keyset cursor: the sort value and ID of the last certificate of the page before.
    after: tuple[Any, int] | None = None
    # Necessary, not sufficient: one name of each certificate ends with one of these
    # (a name-limited caller; the service checks the whole rule).
    name_hints: Sequence[str] = ()
