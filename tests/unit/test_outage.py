"""A database that cannot be reached, in the small: the one line it becomes (host, port,
the driver's reason, never the password), and the two log lines an outage makes in a
running `serve` however many threads meet it. tests/integration/test_store_outage.py
crashes a real PostgreSQL."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import make_url, text

from certbroker.api.problems import status_of
from certbroker.domain.errors import StoreUnavailable
from certbroker.services.outage import Outage
from certbroker.store.db import _reason, current_revision, make_engine
from tests.support.ports import free_port


def test_a_refused_connection_is_one_line_naming_host_port_and_reason_not_the_password() -> None:
    port = free_port()  # nothing listens there
    engine = make_engine(f"postgresql+psycopg://certbroker:hunter2-secret@127.0.0.1:{port}/cb")
    try:
        for look in (
            lambda: current_revision(engine),
            lambda: engine.connect().execute(text("SELECT 1")),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                look()
            message = str(caught.value)
            assert message.startswith(f"cannot reach the database at 127.0.0.1:{port} (")
            assert "refused" in message.lower() and "\n" not in message
            assert "hunter2" not in message and "Is the server running" not in message
            assert (caught.value.where, caught.value.exit_code) == (f"127.0.0.1:{port}", 1)
    finally:
        engine.dispose()


def test_the_drivers_reason_loses_the_address_it_repeats_its_hints_and_any_password() -> None:
    libpq = (
        'connection failed: connection to server at "::1", port 5432 failed: Connection '
        "refused\n\tIs the server running on that host and accepting TCP/IP connections?\n"
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  the database '
        "system is starting up\n"
        'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: FATAL:  '
        'password authentication failed for user "cb" (tried s3cret)'
    )
    url = make_url("postgresql+psycopg://cb:s3cret@db.example.com/cb")
    assert _reason(Exception(libpq), url) == (
        "Connection refused; the database system is starting up; "
        'password authentication failed for user "cb" (tried ***)'
    )


def test_an_outage_is_one_warning_when_it_begins_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage()
    away = StoreUnavailable("db:5432", "Connection refused")
    with caplog.at_level(logging.INFO, logger="certbroker.store"):
        outage.answered()  # no outage: nothing to say
        for _ in range(50):  # every thread, every tick
            outage.lost(away)
        assert outage.down
        outage.answered()
        outage.answered()
    assert not outage.down
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2, said
    assert said[0].startswith("cannot reach the database at db:5432 (Connection refused)")
    assert said[1].startswith("the database answers again")


def test_the_api_answers_503_store_unavailable() -> None:
    assert status_of(StoreUnavailable("db:5432", "gone")) == (503, "store-unavailable")
