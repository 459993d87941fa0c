"""Nothing a CA sends crashes certbroker. Pebble's answers pass through a proxy (`ari`,
tests/support/ari_proxy.py) that turns one of them into what a CA with a bug, a proxy
in the way or a newer protocol might send; certbroker says, in one line, which URL
answered what where ACME expects what, and the order stops (or, for a page that is no
JSON at all, is tried again) instead of ending in a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli, make_cli
from tests.support.ari_proxy import AriProxy
from tests.support.pebble import PebbleServer

Edit = Callable[[dict[str, object]], object]


def distort_json(proxy: AriProxy, path: str, edit: Edit) -> list[str]:
    """Pebble's JSON answers at paths starting with `path`, edited; the paths it edited."""
    seen: list[str] = []

    def distort(method: str, at: str, body: bytes) -> bytes | None:
        if not at.startswith(path):
            return None
        seen.append(at)
        return json.dumps(edit(json.loads(body))).encode()

    proxy.distort = distort
    return seen


def without(key: str) -> Edit:
    return lambda body: {k: v for k, v in body.items() if k != key}


def replaced(key: str, value: object) -> Edit:
    return lambda body: {**body, key: value}


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


# Pebble's paths: /order-plz (newOrder), /my-order/ (an order), /authZ/ (an authorization).
@pytest.mark.parametrize(
    ("path", "edit", "expected"),
    [
        ("/order-plz", lambda body: [body], "answered a list where ACME expects a JSON object"),
        ("/order-plz", without("finalize"), 'answered nothing where ACME expects "finalize"'),
        ("/order-plz", replaced("status", 7), 'answered a number where ACME expects "status"'),
        (
            "/order-plz",
            replaced("authorizations", {"a": 1}),
            'expects "authorizations" as a list of strings',
        ),
        ("/authZ/", replaced("identifier", "x"), 'expects "identifier" as a JSON object'),
        ("/authZ/", replaced("challenges", ["x"]), 'expects "challenges[0]" as a JSON object'),
        (
            "/authZ/",
            lambda body: {**body, "challenges": [{"type": "http-01"}]},
            'expects "challenges[0].url" as a string',
        ),
    ],
    ids=["order-list", "no-finalize", "status-number", "authz-list", "identifier", "chall", "url"],
)
def test_an_answer_of_the_wrong_shape_is_one_line_naming_the_url(
    ari: AriProxy, ari_cli: Cli, path: str, edit: Edit, expected: str
) -> None:
    seen = distort_json(ari, path, edit)
    failed = ari_cli("cert", "request", "shape.example.com", "--wait", check=False)
    assert seen, "the CA was never asked"
    assert failed.returncode == 1, failed.stderr
    line = one_line_error(failed.stderr)
    assert "is not valid ACME" in line and expected in line, line
    assert f"{ari.base}{path}" in line, line  # the URL that answered
    shown = ari_cli.json("cert", "show", "1")
    assert shown["status"] == "failed"
    assert expected in shown["attempts"][-1]["error"]


def test_a_certificate_that_is_no_pem_chain_is_refused(ari: AriProxy, ari_cli: Cli) -> None:
    def distort(method: str, at: str, body: bytes) -> bytes | None:
        return b"<html>Service Unavailable</html>" if at.startswith("/certZ/") else None

    ari.distort = distort
    failed = ari_cli("cert", "request", "pem.example.com", "--wait", check=False)
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert f"{ari.base}/certZ/" in line and "where ACME expects a PEM certificate chain" in line
    assert ari_cli.json("cert", "list")[0]["status"] == "failed"


def test_a_page_that_is_no_json_is_tried_again(ari: AriProxy, ari_cli: Cli) -> None:
    """A maintenance or proxy page instead of the order: it passes, so the order is tried
    again, and issued once the CA answers in JSON."""
    pages: list[str] = []

    def distort(method: str, at: str, body: bytes) -> bytes | None:
        if at.startswith("/my-order/") and not pages:
            pages.append(at)
            return b"<html><body>502 Bad Gateway</body></html>"
        return None

    ari.distort = distort
    issued = ari_cli("cert", "request", "page.example.com", "--wait")
    assert pages
    assert f"the CA's answer to show the order is not ACME: {ari.base}/my-order/" in issued.stderr
    assert "a body that is not JSON" in issued.stderr
    assert ari_cli.json("cert", "show", "1")["status"] == "valid"


def test_a_directory_of_the_wrong_shape_is_refused_before_anything_is_stored(
    ari: AriProxy, pebble: PebbleServer, tmp_path: Path
) -> None:
    cli = make_cli(tmp_path / "data", pebble)
    distort_json(ari, "/dir", replaced("newAccount", ["not", "a", "url"]))
    failed = cli(
        "account", "register", "--directory", ari.directory_url, "--email",
        "dir@example.com", "--agree-tos", "--ca-bundle", str(pebble.ca_bundle),
        check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    line = one_line_error(failed.stderr)
    assert f"{ari.directory_url} answered a list where ACME expects" in line
    assert '"newAccount" as a string' in line
    assert cli.json("account", "list") == []


def test_an_orders_list_that_cannot_be_read_is_passed_over(ari: AriProxy, ari_cli: Cli) -> None:
    """The look for an order a dead process left is best effort: a CA whose account
    answer names its orders list wrongly is ordered from as usual."""
    seen = distort_json(ari, "/my-account/", replaced("orders", 42))
    killed = ari_cli("cert", "request", "lost.example.com", "--wait", check=False,
                     env={"CERTBROKER_FAULT_KILL_AFTER": "order-created"})  # fmt: skip
    assert killed.returncode != 0
    resumed = ari_cli("cert", "resume", "1")
    assert seen  # the account was asked for its orders, and answered wrongly
    assert "Traceback" not in resumed.stderr
    assert ari_cli.json("cert", "show", "1")["status"] == "valid"
