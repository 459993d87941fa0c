"""Command-line parameters several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer


def number(what: str) -> Callable[[str], int]:
    """A parser that names the value it refuses (Typer's own message does not)."""

    def parse(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not {what}") from None

    return parse


CERT_ID_HELP = "a certificate ID (a number, as `certbroker cert list` shows)"

CertId = Annotated[
    int,
    typer.Argument(
        metavar="ID", help="Certificate ID, as `cert list` shows it.", parser=number(CERT_ID_HELP)
    ),
]
