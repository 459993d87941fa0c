"""Bad input, end to end: every command validates before it stores anything.

Each refusal is checked the same way (`refused`): the exit code (2 for usage and
validation errors, 1 when the CA or the network failed), ONE line on stderr that starts
with "error:", names the offending input and says what to do, no traceback, nothing on
stdout, and nothing stored (`cert list --json` is [] and `account list --json` is as it
was). Refusals that come from the CA itself must show the CA's problem and store it with
the attempt.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import Cli, make_cli
from tests.support.certs import self_signed
from tests.support.pebble import PebbleServer, start_pebble
from tests.support.ports import free_port

PROBLEM = "urn:ietf:params:acme:error:"


# -- helpers ------------------------------------------------------------------------------


def refused(proc: Any, exit_code: int, *expected: str, stdout_empty: bool = True) -> str:
    """Assert a clean refusal and return its one line (case-insensitive `expected` parts)."""
    shown = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == exit_code, f"want exit {exit_code}, got {shown}"
    line = proc.stderr.strip()
    assert line, f"no message on stderr: {shown}"
    assert "\n" not in line, f"want ONE line on stderr, got {shown}"
    assert line.startswith("error:"), f"want 'error: …', got {shown}"
    for part in expected:
        assert part.lower() in line.lower(), f"{part!r} is not in the message {line!r}"
    if stdout_empty:
        assert proc.stdout.strip() == "", f"a refusal printed on stdout: {shown}"
    return line


def accounts_of(cli: Cli) -> Any:
    return cli.json("account", "list")


def assert_nothing_stored(cli: Cli, accounts_before: Any) -> None:
    assert cli.json("cert", "list") == []
    assert accounts_of(cli) == accounts_before


def write_key(path: Path, key: Any, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def pebble_terms(pebble: PebbleServer) -> str:
    directory = requests.get(pebble.directory_url, verify=str(pebble.ca_bundle), timeout=10)
    terms: str = directory.json()["meta"]["termsOfService"]
    return terms


def unreachable_directory() -> str:
    return f"https://127.0.0.1:{free_port()}/dir"


def register_args(directory: str, *extra: str) -> list[str]:
    return ["account", "register", "--directory", directory, *extra]


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered_template(tmp_path_factory: pytest.TempPathFactory, pebble: PebbleServer) -> Cli:
    """A data dir with one valid account "main", copied (never used) by `main_cli`."""
    template = make_cli(tmp_path_factory.mktemp("template") / "data", pebble)
    template.register()
    return template


@pytest.fixture
def main_cli(tmp_path: Path, pebble: PebbleServer, registered_template: Cli) -> Cli:
    """A CLI with its own store that holds the account "main" (shared at the CA: never
    deactivate it, and never let it order; `cli` is for that)."""
    data_dir = tmp_path / "data"
    shutil.copytree(registered_template.data_dir, data_dir)
    return make_cli(data_dir, pebble)


@pytest.fixture
def main_accounts(main_cli: Cli) -> Any:
    accounts = accounts_of(main_cli)
    assert [a["name"] for a in accounts] == ["main"]
    return accounts


# -- names ------------------------------------------------------------------------------

LONG_LABEL = "a" * 64
NAME_254 = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])
# 63 characters as typed, but 67 in its ASCII form (xn--…): the limit is on the A-label.
LONG_U_LABEL = "a" * 62 + "ü"

BAD_NAMES: list[tuple[str, str, list[str]]] = [
    # (id, name, parts the message must hold besides the name)
    ("empty", "", ["empty"]),
    ("blank", "   ", ["empty"]),
    ("only-a-dot", ".", []),
    ("empty-label-inside", "a..example.com", ["empty label"]),
    ("empty-label-leading", ".example.com", ["empty label"]),
    ("two-trailing-dots", "example.com..", ["empty label"]),
    ("label-64", f"{LONG_LABEL}.example.com", ["63"]),
    ("name-254", NAME_254, ["253"]),
    ("u-label-over-63-as-punycode", f"{LONG_U_LABEL}.example", ["63"]),
    ("ipv4", "192.0.2.1", ["IP address"]),
    ("ipv4-trailing-dot", "192.0.2.1.", ["IP address"]),
    ("ipv4-loopback", "127.0.0.1", ["IP address"]),
    ("ipv6", "2001:db8::1", ["IP address"]),
    ("ipv6-loopback", "::1", ["IP address"]),
    ("ipv6-bracketed", "[2001:db8::1]", ["IP address"]),
    ("numeric-tld", "1.2.3", []),
    ("single-label", "localhost", ["fully qualified"]),
    ("single-label-2", "intranet", ["fully qualified"]),
    ("wildcard-not-leftmost", "www.*.example.com", ["wildcard"]),
    ("wildcard-twice", "*.*.example.com", ["wildcard"]),
    ("wildcard-partial-label", "*www.example.com", ["wildcard"]),
    ("wildcard-suffix", "w*.example.com", ["wildcard"]),
    ("wildcard-alone", "*", ["wildcard"]),
    ("wildcard-over-tld", "*.com", ["wildcard"]),
    ("space", "exa mple.com", []),
    ("underscore", "ex_ample.com", ["underscore"]),
    ("leading-hyphen", "-example.com", ["hyphen"]),
    ("trailing-hyphen", "example-.com", ["hyphen"]),
    ("reserved-hyphens", "ab--cd.example.com", ["--"]),
    ("bad-a-label", "xn--zz.example.com", ["xn--zz"]),
    ("emoji", "ex😀ample.com", []),
    ("url", "https://www.example.com/", ["URL"]),
    ("host-port", "www.example.com:443", ["port"]),
    ("at-sign", "user@example.com", []),
    # Rich markup in the input must be shown literally, never interpreted.
    ("markup-closing-tag", "[/]x.example.com", []),
    ("markup-style-tag", "[bold]x.example.com", []),
]


def _name_fragment(name: str) -> str:
    """What of the name the message must show (long names may be shortened in the middle)."""
    text = name.strip()
    return text[:20] if len(text) > 40 else text


@pytest.mark.parametrize(
    ("name", "hints"),
    [pytest.param(name, hints, id=case) for case, name, hints in BAD_NAMES],
)
def test_bad_name_is_refused_before_anything_is_stored(
    main_cli: Cli, main_accounts: Any, name: str, hints: list[str]
) -> None:
    # `--` so that '-example.com' is a name, not an option.
    proc = main_cli("cert", "request", "--", name, check=False)
    refused(proc, 2, _name_fragment(name), *hints)
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, id=case)
        for case, name, _ in BAD_NAMES
        if case in {"empty-label-inside", "label-64", "ipv4", "url", "markup-closing-tag"}
    ],
)
@pytest.mark.parametrize("position", ["first", "last"])
def test_one_bad_name_among_good_ones_stores_nothing(
    main_cli: Cli, main_accounts: Any, name: str, position: str
) -> None:
    good = ["good.example.com", "www.good.example.com"]
    names = [name, *good] if position == "first" else [*good, name]
    proc = main_cli("cert", "request", "--", *names, check=False)
    refused(proc, 2, _name_fragment(name))
    assert_nothing_stored(main_cli, main_accounts)


def test_no_name_at_all_is_refused(main_cli: Cli, main_accounts: Any) -> None:
    refused(main_cli("cert", "request", check=False), 2, "name")
    assert_nothing_stored(main_cli, main_accounts)


def test_101_names_are_refused(main_cli: Cli, main_accounts: Any) -> None:
    names = [f"n{i}.example.com" for i in range(101)]
    refused(main_cli("cert", "request", *names, check=False), 2, "101", "100")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Example.com", "example.com."),
        ("example.com", "example.com"),
        ("WWW.Example.COM", " www.example.com "),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "bücher.example."),
        ("ｅｘａｍｐｌｅ.com", "example.com"),
    ],
)
@pytest.mark.parametrize("between", [False, True])
def test_duplicates_after_normalisation_are_refused(
    main_cli: Cli, main_accounts: Any, first: str, second: str, between: bool
) -> None:
    names = [first, "other.example.com", second] if between else [first, second]
    proc = main_cli("cert", "request", *names, check=False)
    refused(proc, 2, _name_fragment(first), "once")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize(
    "names",
    [
        ["*.example.com"],
        ["example.com", "*.example.com"],
        ["*.Example.COM."],
        ["*.bücher.example"],
    ],
)
@pytest.mark.parametrize("explicit", [False, True])
def test_wildcard_over_http01_says_to_use_dns01(
    main_cli: Cli, main_accounts: Any, names: list[str], explicit: bool
) -> None:
    extra = ["--challenge", "http-01"] if explicit else []
    wildcard = next(n for n in names if n.startswith("*"))
    proc = main_cli("cert", "request", *names, *extra, check=False)
    refused(proc, 2, wildcard, "wildcard", "dns-01")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("challenge", ["tls-alpn-01", "bogus", "HTTP01", ""])
def test_unknown_challenge_is_refused(main_cli: Cli, main_accounts: Any, challenge: str) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--challenge", challenge, check=False)
    refused(proc, 2, f"{challenge!r}", "http-01")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize(
    ("names", "stored"),
    [
        (["bücher.example"], ["xn--bcher-kva.example"]),
        (["BÜCHER.Example."], ["xn--bcher-kva.example"]),
        (["straße.example"], ["xn--strae-oqa.example"]),
        (["ｅｘａｍｐｌｅ.com"], ["example.com"]),
        (["Example.COM.", " WWW.example.com "], ["example.com", "www.example.com"]),
        ([f"{'a' * 63}.example.com"], [f"{'a' * 63}.example.com"]),
        ([NAME_254[:-1]], [NAME_254[:-1]]),  # exactly 253 characters
        ([f"n{i}.example.com" for i in range(100)], [f"n{i}.example.com" for i in range(100)]),
    ],
    ids=[
        "idna",
        "idna-upper-dot",
        "idna-sharp-s",
        "fullwidth",
        "case-dot-space",
        "label-63",
        "name-253",
        "100-names",
    ],
)
def test_valid_names_are_stored_normalised(
    main_cli: Cli, names: list[str], stored: list[str]
) -> None:
    assert len(NAME_254[:-1]) == 253
    details = main_cli.json("cert", "request", *names)
    assert details["names"] == stored
    assert details["status"] == "pending"
    assert [c["names"] for c in main_cli.json("cert", "list")] == [stored]


def test_idna_name_is_issued_in_its_ascii_form(cli: Cli) -> None:
    cli.register()
    details = cli.json("cert", "request", "bücher.example", "--wait")
    assert details["status"] == "valid"
    assert details["names"] == ["xn--bcher-kva.example"]
    out = cli.data_dir.parent / "idna.pem"
    cli("cert", "export", str(details["id"]), "--format", "fullchain", "--out", str(out))
    leaf = x509.load_pem_x509_certificate(out.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]


# -- keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ed25519", "rsa1024", "ec-p521", "RSA-2048", "", "p256"])
def test_unknown_key_type_is_refused(main_cli: Cli, main_accounts: Any, key_type: str) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--key-type", key_type, check=False)
    refused(proc, 2, f"{key_type!r}", "ec-p256", "rsa2048")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("key_policy", ["bogus", "imported-key", "", "renew"])
def test_unknown_key_policy_is_refused(main_cli: Cli, main_accounts: Any, key_policy: str) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--key-policy", key_policy, check=False)
    refused(proc, 2, f"{key_policy!r}", "new", "reuse", "imported")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("days", ["0", "-5", "nan", "inf", "soon"])
def test_bad_renew_before_days_is_refused(main_cli: Cli, main_accounts: Any, days: str) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--renew-before-days", days, check=False)
    refused(proc, 2, "--renew-before-days")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_unreadable_key_file_is_refused(
    main_cli: Cli, main_accounts: Any, tmp_path: Path, which: str
) -> None:
    path = tmp_path / "nope.pem"
    if which == "directory":
        path.mkdir()
    proc = main_cli(
        "cert", "request", "www.example.com", "--key-policy", "imported",
        "--key-file", str(path), check=False,
    )  # fmt: skip
    refused(proc, 2, "--key-file", str(path))
    assert_nothing_stored(main_cli, main_accounts)


def _not_a_key(kind: str, path: Path) -> Path:
    signer = ec.generate_private_key(ec.SECP256R1())
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a key\n")
    elif kind == "certificate":
        path.write_bytes(self_signed(signer, "not a key").public_bytes(serialization.Encoding.PEM))
    elif kind == "der-certificate":
        path.write_bytes(self_signed(signer, "not a key").public_bytes(serialization.Encoding.DER))
    elif kind == "public-key":
        path.write_bytes(
            signer.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    elif kind == "damaged-pem":
        pem = write_key(path, signer).read_text().splitlines()
        path.write_text("\n".join([pem[0], pem[1][:-8] + "AAAAAAAA", *pem[2:]]) + "\n")
    elif kind == "ed25519":
        write_key(path, ed25519.Ed25519PrivateKey.generate())
    elif kind == "rsa1024":
        write_key(path, rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    elif kind == "ec-p521":
        write_key(path, ec.generate_private_key(ec.SECP521R1()))
    elif kind == "encrypted":
        write_key(path, signer, password=b"secret")
    elif kind == "public-jwk":
        path.write_text(json.dumps({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}))
    else:
        raise AssertionError(kind)
    return path


NOT_KEYS = [
    ("empty", "empty"),
    ("text", "private key"),
    ("certificate", "certificate"),
    ("der-certificate", "certificate"),
    ("public-key", "public key"),
    ("damaged-pem", "private key"),
    ("ed25519", "Ed25519"),
    ("rsa1024", "1024"),
    ("ec-p521", "secp521r1"),
    ("encrypted", "passphrase"),
    ("public-jwk", "public key"),
]


@pytest.mark.parametrize(("kind", "hint"), NOT_KEYS, ids=[k for k, _ in NOT_KEYS])
def test_key_file_that_holds_no_usable_key_is_refused(
    main_cli: Cli, main_accounts: Any, tmp_path: Path, kind: str, hint: str
) -> None:
    path = _not_a_key(kind, tmp_path / f"{kind}.pem")
    proc = main_cli(
        "cert", "request", "www.example.com", "--key-policy", "imported",
        "--key-file", str(path), check=False,
    )  # fmt: skip
    refused(proc, 2, "--key-file", hint)
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize(
    ("key_factory", "actual", "asked"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ec-p384", "rsa2048"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ec-p384", "ec-p256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ec-p256", "rsa4096"),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2048",
            "rsa3072",
        ),
    ],
    ids=["p384-as-rsa2048", "p384-as-p256", "p256-as-rsa4096", "rsa2048-as-rsa3072"],
)
def test_key_file_that_does_not_match_key_type_is_refused(
    main_cli: Cli, main_accounts: Any, tmp_path: Path, key_factory: Any, actual: str, asked: str
) -> None:
    path = write_key(tmp_path / "k.pem", key_factory())
    proc = main_cli(
        "cert", "request", "www.example.com", "--key-policy", "imported",
        "--key-file", str(path), "--key-type", asked, check=False,
    )  # fmt: skip
    refused(proc, 2, "--key-type", actual, asked)
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("policy", [None, "new", "reuse"])
def test_key_file_without_imported_policy_is_refused(
    main_cli: Cli, main_accounts: Any, tmp_path: Path, policy: str | None
) -> None:
    path = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    extra = ["--key-policy", policy] if policy else []
    proc = main_cli(
        "cert", "request", "www.example.com", "--key-file", str(path), *extra, check=False
    )
    refused(proc, 2, "--key-file", "--key-policy imported")
    assert_nothing_stored(main_cli, main_accounts)


def test_imported_policy_without_key_file_is_refused(main_cli: Cli, main_accounts: Any) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--key-policy", "imported", check=False)
    refused(proc, 2, "--key-policy imported", "--key-file")
    assert_nothing_stored(main_cli, main_accounts)


# -- subject ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "hint"),
    [
        ("--subject-country", "DEU", "two-letter"),
        ("--subject-country", "D", "two-letter"),
        ("--subject-country", "1A", "two-letter"),
        ("--subject-country", "ÄÖ", "two-letter"),
        ("--subject-country", "", "country"),
        ("--subject-org", "", "org"),
        ("--subject-org", "x" * 65, "64"),
        ("--subject-ou", "a\tb", "control"),
        ("--subject-city", "   ", "city"),
        ("--subject-email", "not-an-email", "email"),
        ("--subject-email", "jörg@example.com", "email"),
    ],
)
def test_bad_subject_field_is_refused(
    main_cli: Cli, main_accounts: Any, option: str, value: str, hint: str
) -> None:
    proc = main_cli("cert", "request", "www.example.com", option, value, check=False)
    refused(proc, 2, hint)
    assert_nothing_stored(main_cli, main_accounts)


# -- which account ----------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["nosuch", "99", "Main"])
def test_unknown_account_is_refused(main_cli: Cli, main_accounts: Any, ref: str) -> None:
    proc = main_cli("cert", "request", "www.example.com", "--account", ref, check=False)
    refused(proc, 2, f"{ref!r}", "account list")
    assert_nothing_stored(main_cli, main_accounts)


def test_request_without_any_account_says_to_register(offline_cli: Cli) -> None:
    proc = offline_cli("cert", "request", "www.example.com", check=False)
    refused(proc, 2, "account register")
    assert_nothing_stored(offline_cli, [])


def test_several_accounts_need_account_option(cli: Cli) -> None:
    cli.register("main")
    cli.register("second")
    before = accounts_of(cli)
    proc = cli("cert", "request", "www.example.com", check=False)
    refused(proc, 2, "main", "second", "--account")
    assert_nothing_stored(cli, before)
    chosen = cli.json("cert", "request", "www.example.com", "--account", "second")
    assert chosen["account"] == "second"


@pytest.mark.parametrize("explicit", [True, False])
def test_deactivated_account_cannot_request(cli: Cli, explicit: bool) -> None:
    cli.register()
    cli("account", "deactivate", "main", "--yes")
    before = accounts_of(cli)
    assert [a["status"] for a in before] == ["deactivated"]
    extra = ["--account", "main"] if explicit else []
    proc = cli("cert", "request", "www.example.com", *extra, check=False)
    # Without --account the only account is deactivated: say so, not "no account yet".
    refused(proc, 2, "main", "deactivated", "register")
    assert_nothing_stored(cli, before)


def test_deactivate_without_yes_changes_nothing(main_cli: Cli, main_accounts: Any) -> None:
    proc = main_cli("account", "deactivate", "main", check=False)
    refused(proc, 2, "--yes")
    assert_nothing_stored(main_cli, main_accounts)


# -- account register -----------------------------------------------------------------


def test_register_without_email_is_refused(offline_cli: Cli) -> None:
    proc = offline_cli(*register_args(unreachable_directory(), "--agree-tos"), check=False)
    refused(proc, 2, "--email")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "ops@", "@example.com", "ops@localhost", "o ps@example.com", "mailto:", ""],
)
def test_register_with_bad_email_is_refused_before_the_ca_is_asked(
    offline_cli: Cli, email: str
) -> None:
    # The CA is unreachable: exit 2 (not 1) shows validation ran before any CA call.
    args = register_args(unreachable_directory(), "--agree-tos", "--email", email)
    proc = offline_cli(*args, check=False)
    refused(proc, 2, f"{email!r}", "e-mail")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize(
    "eab", [["--eab-kid", "kid-1"], ["--eab-hmac-key", "c2VjcmV0LWtleS1mb3ItdGVzdHM"]]
)
def test_register_with_half_an_eab_is_refused(offline_cli: Cli, eab: list[str]) -> None:
    args = register_args(unreachable_directory(), "--agree-tos", "--email", "ops@example.com")
    proc = offline_cli(*args, *eab, check=False)
    refused(proc, 2, "--eab-kid", "--eab-hmac-key")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize("key_type", ["ed25519", "rsa1024", "bogus"])
def test_register_with_unknown_key_type_is_refused(offline_cli: Cli, key_type: str) -> None:
    args = register_args(unreachable_directory(), "--agree-tos", "--email", "ops@example.com")
    proc = offline_cli(*args, "--key-type", key_type, check=False)
    refused(proc, 2, f"{key_type!r}", "ec-p256")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize("directory", ["letsencrypt-prod", "ftp://acme.example.com/dir", ""])
def test_register_with_bad_directory_is_refused(offline_cli: Cli, directory: str) -> None:
    args = register_args(directory, "--agree-tos", "--email", "ops@example.com")
    refused(offline_cli(*args, check=False), 2, f"{directory!r}", "letsencrypt")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize("name", ["12345", "two words", "", "x" * 101])
def test_register_with_bad_account_name_is_refused(offline_cli: Cli, name: str) -> None:
    args = register_args(unreachable_directory(), "--agree-tos", "--email", "ops@example.com")
    proc = offline_cli(*args, "--name", name, check=False)
    refused(proc, 2, "name")
    assert_nothing_stored(offline_cli, [])


def test_register_with_taken_name_is_refused(
    main_cli: Cli, main_accounts: Any, pebble: PebbleServer
) -> None:
    args = register_args(
        pebble.directory_url, "--agree-tos", "--email", "ops@example.com",
        "--ca-bundle", str(pebble.ca_bundle), "--name", "main",
    )  # fmt: skip
    refused(main_cli(*args, check=False), 2, "'main'", "--name")
    assert_nothing_stored(main_cli, main_accounts)


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_register_with_unreadable_ca_bundle_is_refused(
    offline_cli: Cli, tmp_path: Path, which: str
) -> None:
    path = tmp_path / "ca.pem"
    if which == "directory":
        path.mkdir()
    args = register_args(unreachable_directory(), "--agree-tos", "--email", "ops@example.com")
    proc = offline_cli(*args, "--ca-bundle", str(path), check=False)
    refused(proc, 2, "--ca-bundle", str(path))
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize("content", ["empty", "text", "private-key", "der-certificate"])
def test_register_with_ca_bundle_that_holds_no_certificate_is_refused(
    offline_cli: Cli, tmp_path: Path, content: str
) -> None:
    path = tmp_path / "ca.pem"
    key = ec.generate_private_key(ec.SECP256R1())
    if content == "empty":
        path.write_bytes(b"")
    elif content == "text":
        path.write_text("not a certificate\n")
    elif content == "private-key":
        write_key(path, key)
    else:
        path.write_bytes(self_signed(key, "not a key").public_bytes(serialization.Encoding.DER))
    args = register_args(unreachable_directory(), "--agree-tos", "--email", "ops@example.com")
    proc = offline_cli(*args, "--ca-bundle", str(path), check=False)
    refused(proc, 2, "--ca-bundle", str(path), "PEM")
    assert_nothing_stored(offline_cli, [])


def test_register_without_agree_tos_shows_the_terms(cli: Cli, pebble: PebbleServer) -> None:
    terms = pebble_terms(pebble)
    args = register_args(
        pebble.directory_url, "--email", "ops@example.com", "--ca-bundle", str(pebble.ca_bundle)
    )
    refused(cli(*args, check=False), 2, terms, "--agree-tos")
    assert_nothing_stored(cli, [])


def test_register_at_unreachable_ca_is_a_network_failure(offline_cli: Cli) -> None:
    directory = unreachable_directory()
    args = register_args(directory, "--agree-tos", "--email", "ops@example.com")
    refused(offline_cli(*args, check=False), 1, "cannot reach", directory)
    assert_nothing_stored(offline_cli, [])


def test_register_without_ca_bundle_at_private_pki_says_to_pass_it(
    cli: Cli, pebble: PebbleServer
) -> None:
    args = register_args(pebble.directory_url, "--agree-tos", "--email", "ops@example.com")
    refused(cli(*args, check=False), 1, "TLS", pebble.directory_url, "--ca-bundle")
    assert_nothing_stored(cli, [])


def test_register_with_wrong_ca_bundle_says_to_pass_the_right_one(
    cli: Cli, pebble: PebbleServer, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(
        self_signed(ec.generate_private_key(ec.SECP256R1())).public_bytes(
            serialization.Encoding.PEM
        )
    )
    args = register_args(
        pebble.directory_url, "--agree-tos", "--email", "ops@example.com",
        "--ca-bundle", str(other),
    )  # fmt: skip
    refused(cli(*args, check=False), 1, "TLS", "--ca-bundle")
    assert_nothing_stored(cli, [])


class _FakeDirectory(BaseHTTPRequestHandler):
    body = b""
    content_type = "application/json"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def fake_directory(request: pytest.FixtureRequest) -> Iterator[str]:
    """An HTTP server answering every GET with a 200 that is not an ACME directory."""
    content_type, body = request.param
    handler = type("Handler", (_FakeDirectory,), {"body": body, "content_type": content_type})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/directory"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "fake_directory",
    [
        ("application/json", b'{"hello": "world"}'),
        ("application/json", b"[1, 2, 3]"),
        ("text/html", b"<html><body>It works!</body></html>"),
    ],
    ids=["json-without-newOrder", "json-list", "html"],
    indirect=True,
)
def test_register_at_url_that_is_not_an_acme_directory(
    offline_cli: Cli, fake_directory: str
) -> None:
    # The user gave a wrong URL: a usage error (2) that names it, not a CA failure.
    args = register_args(fake_directory, "--agree-tos", "--email", "ops@example.com")
    refused(offline_cli(*args, check=False), 2, fake_directory, "ACME directory")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize("path", ["/roots/0", "/no-such-page"])
def test_register_at_pebble_url_that_is_not_its_directory(
    cli: Cli, pebble: PebbleServer, path: str
) -> None:
    url = pebble.management_url + path
    args = register_args(
        url, "--agree-tos", "--email", "ops@example.com", "--ca-bundle", str(pebble.ca_bundle)
    )
    refused(cli(*args, check=False), 2, url, "ACME directory")
    assert_nothing_stored(cli, [])


# -- external account binding at a CA that requires it ---------------------------------

EAB_KID = "bad-input-kid"
EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    server = start_pebble(
        tmp_path_factory.mktemp("pebble-eab"),
        http_port=free_port(),
        eab_keys={EAB_KID: EAB_KEY},
        eab_required=True,
    )
    try:
        yield server
    finally:
        server.stop()


def _eab_register(pebble: PebbleServer, *extra: str) -> list[str]:
    return register_args(
        pebble.directory_url, "--agree-tos", "--email", "ops@example.com",
        "--ca-bundle", str(pebble.ca_bundle), *extra,
    )  # fmt: skip


def test_eab_required_but_not_given(offline_cli: Cli, eab_pebble: PebbleServer) -> None:
    refused(offline_cli(*_eab_register(eab_pebble), check=False), 2, "--eab-kid", "--eab-hmac-key")
    assert_nothing_stored(offline_cli, [])


def test_eab_hmac_key_that_is_not_base64url(offline_cli: Cli, eab_pebble: PebbleServer) -> None:
    args = _eab_register(eab_pebble, "--eab-kid", EAB_KID, "--eab-hmac-key", "not base64!")
    refused(offline_cli(*args, check=False), 2, "--eab-hmac-key")
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize(
    ("kid", "hmac_key"),
    [
        (EAB_KID, "c2VjcmV0LWtleS1mb3ItdGVzdHMtdGhhdC1pcy13cm9uZw"),
        ("no-such-kid", EAB_KEY),
    ],
    ids=["wrong-key", "unknown-kid"],
)
def test_eab_refused_by_the_ca_shows_its_problem(
    offline_cli: Cli, eab_pebble: PebbleServer, kid: str, hmac_key: str
) -> None:
    args = _eab_register(eab_pebble, "--eab-kid", kid, "--eab-hmac-key", hmac_key)
    line = refused(offline_cli(*args, check=False), 1, "register")
    # The CA's own problem: its type (short or full) and its detail.
    assert "unauthorized" in line or "malformed" in line, line
    assert_nothing_stored(offline_cli, [])


# -- listing, showing, revoking, exporting ---------------------------------------------


@pytest.mark.parametrize("status", ["bogus", "VALID ", "issued", ""])
def test_cert_list_with_unknown_status_is_refused(offline_cli: Cli, status: str) -> None:
    refused(
        offline_cli("cert", "list", "--status", status, check=False),
        2,
        f"{status!r}",
        "pending",
        "valid",
        "revoked",
    )


def test_cert_list_with_negative_expiring_within_is_refused(offline_cli: Cli) -> None:
    refused(
        offline_cli("cert", "list", "--expiring-within", "-1", check=False),
        2,
        "--expiring-within",
    )


@pytest.mark.parametrize("reason", ["bogus", "cACompromise", "1", "", "keycompromise-now"])
def test_revoke_with_unknown_reason_is_refused(main_cli: Cli, reason: str) -> None:
    queued = main_cli.json("cert", "request", "revoke.example.com")
    proc = main_cli("cert", "revoke", str(queued["id"]), "--reason", reason, check=False)
    refused(proc, 2, f"{reason!r}", "keyCompromise", "superseded")
    assert main_cli.json("cert", "show", str(queued["id"]))["status"] == "pending"


def test_revoke_of_a_certificate_never_issued_is_refused(main_cli: Cli) -> None:
    queued = main_cli.json("cert", "request", "never.example.com")
    proc = main_cli("cert", "revoke", str(queued["id"]), check=False)
    refused(proc, 2, str(queued["id"]), "never issued")
    assert main_cli.json("cert", "show", str(queued["id"]))["status"] == "pending"


@pytest.mark.parametrize("fmt", ["pem", "bogus"])
def test_export_of_a_certificate_never_issued_writes_nothing(
    main_cli: Cli, tmp_path: Path, fmt: str
) -> None:
    queued = main_cli.json("cert", "request", "never.example.com")
    out = tmp_path / "out"
    proc = main_cli(
        "cert", "export", str(queued["id"]), "--format", fmt, "--out", str(out), check=False
    )
    refused(proc, 2, fmt if fmt == "bogus" else str(queued["id"]))
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cert", "show", "999"], ["999", "cert list"]),
        (["cert", "show", "999", "--json"], ["999"]),
        (["cert", "resume", "999"], ["999"]),
        (["cert", "revoke", "999"], ["999"]),
        (["cert", "delete", "999"], ["999"]),
        (["cert", "export", "999", "--format", "pem", "--out", "OUT"], ["999"]),
        (["account", "show", "nosuch"], ["'nosuch'", "account list"]),
        (["account", "show", "nosuch", "--json"], ["'nosuch'"]),
        (["account", "show", "nosuch", "--refresh"], ["'nosuch'"]),
        (["account", "update", "nosuch", "--email", "a@example.com"], ["'nosuch'"]),
        (["account", "rollover", "nosuch"], ["'nosuch'"]),
        (["account", "deactivate", "nosuch", "--yes"], ["'nosuch'"]),
        (["account", "delete", "nosuch"], ["'nosuch'"]),
        (["account", "export-key", "nosuch", "--out", "OUT"], ["'nosuch'"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) and v[0] in ("cert", "account") else None,
)
def test_unknown_id_or_name_is_refused(
    offline_cli: Cli, tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else a for a in args]
    refused(offline_cli(*args, check=False), 2, *expected)
    assert not out.exists()
    assert_nothing_stored(offline_cli, [])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["cert", "show", "abc"], ["abc"]),
        (["cert", "list", "--bogus"], ["--bogus"]),
        (["cert", "list", "--expiring-within", "soon"], ["soon"]),
        (["account", "register", "--email", "ops@example.com"], ["--directory"]),
        (["cert", "nosuch"], ["nosuch"]),
    ],
    ids=["not-an-id", "unknown-option", "not-a-number", "missing-option", "unknown-command"],
)
def test_command_line_usage_errors_are_one_line(
    offline_cli: Cli, args: list[str], expected: list[str]
) -> None:
    refused(offline_cli(*args, check=False), 2, *expected)


@pytest.mark.parametrize("kind", ["text", "certificate", "missing"])
def test_account_import_with_bad_key_file_is_refused(
    main_cli: Cli, main_accounts: Any, pebble: PebbleServer, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "account.pem"
    if kind != "missing":
        _not_a_key(kind, path)
    proc = main_cli(
        "account", "import", "--key-file", str(path), "--directory", pebble.directory_url,
        "--ca-bundle", str(pebble.ca_bundle), check=False,
    )  # fmt: skip
    refused(proc, 2, str(path) if kind == "missing" else "key")
    assert_nothing_stored(main_cli, main_accounts)


# -- configuration ----------------------------------------------------------------------

BAD_CONFIGS = [
    ("invalid-toml", "data_dir = \n", ["TOML"]),
    ("unclosed-string", 'data_dir = "/tmp\n', ["TOML"]),
    ("unknown-setting", "colour = 1\n", ["colour"]),
    ("wrong-type", 'http01_port = "eighty"\n', ["http01_port"]),
    ("port-out-of-range", "http01_port = 70000\n", ["http01_port"]),
    ("no-workers", "workers = 0\n", ["workers"]),
    ("negative-worker-processes", "worker_processes = -2\n", ["worker_processes"]),
    ("negative-renew-before", "renew_before_days = -1\n", ["renew_before_days"]),
    ("unknown-renewal-key", "[renewal]\ndays_before = 3\n", ["renewal.days_before"]),
    ("unknown-log-level", 'log_level = "loud"\n', ["log_level"]),
    ("bad-listen", 'listen = "nope"\n', ["listen"]),
    ("not-utf8", b"\xff\xfe\x00d\x00a\x00t\x00a", []),
]


@pytest.mark.parametrize(
    ("content", "hints"), [pytest.param(c, h, id=i) for i, c, h in BAD_CONFIGS]
)
def test_bad_config_file_is_refused(
    offline_cli: Cli, tmp_path: Path, content: str | bytes, hints: list[str]
) -> None:
    path = tmp_path / "certbroker.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    # The harness sets these in the environment, which would win over the file.
    env = {"CERTBROKER_HTTP01_PORT": "", "CERTBROKER_LISTEN": ""}
    proc = offline_cli("--config", str(path), "cert", "list", env=env, check=False)
    refused(proc, 2, str(path), *hints)
    assert not offline_cli.data_dir.exists(), "a refused configuration created the data dir"


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_unreadable_config_file_is_refused(offline_cli: Cli, tmp_path: Path, which: str) -> None:
    path = tmp_path / "certbroker.toml"
    if which == "directory":
        path.mkdir()
    proc = offline_cli("--config", str(path), "cert", "list", check=False)
    refused(proc, 2, str(path))
    assert not offline_cli.data_dir.exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CERTBROKER_HTTP01_PORT", "abc"),
        ("CERTBROKER_HTTP01_PORT", "0"),
        ("CERTBROKER_HTTP01_PORT", "70000"),
        ("CERTBROKER_HTTP01_PORT", "-1"),
        ("CERTBROKER_HTTP01_PORT", "80.5"),
        ("CERTBROKER_HTTP01_PORT", "8o8o"),
        ("CERTBROKER_WORKERS", "0"),
        ("CERTBROKER_WORKERS", "many"),
        ("CERTBROKER_WORKER_PROCESSES", "-1"),
        ("CERTBROKER_WORKER_PROCESSES", "all"),
        ("CERTBROKER_RENEW_BEFORE_DAYS", "soon"),
        ("CERTBROKER_RENEW_BEFORE_DAYS", "-3"),
        ("CERTBROKER_SCHEDULER_INTERVAL", "0"),
        ("CERTBROKER_VALIDATION_FAILURES_PER_HOUR", "0"),
        ("CERTBROKER_LOG_LEVEL", "loud"),
        ("CERTBROKER_LISTEN", "nope"),
        ("CERTBROKER_ORDER_TIMEOUT", "soon"),
        ("CERTBROKER_ORDER_TIMEOUT", "-5"),
        ("CERTBROKER_RETRY_ATTEMPTS", "-1"),
        ("CERTBROKER_DATABASE_URL", "not-a-url"),
    ],
)
def test_bad_environment_setting_is_refused(
    main_cli: Cli, main_accounts: Any, variable: str, value: str
) -> None:
    proc = main_cli("cert", "request", "www.example.com", env={variable: value}, check=False)
    refused(proc, 2, variable, value)
    assert_nothing_stored(main_cli, main_accounts)


# -- the CA refuses ----------------------------------------------------------------------


def _point_name_at_nothing(pebble: PebbleServer, name: str) -> None:
    """Make Pebble's DNS answer `name` with 127.0.0.2, where no HTTP-01 responder listens
    (the CLI's responder binds 127.0.0.1 only), so validation fails at the CA."""
    assert pebble.challtestsrv_url is not None
    resp = requests.post(
        f"{pebble.challtestsrv_url}/add-a",
        json={"host": name, "addresses": ["127.0.0.2"]},
        timeout=10,
    )
    resp.raise_for_status()


def _problem_parts(problem: dict[str, Any]) -> list[dict[str, Any]]:
    return [problem, *[p for sub in problem.get("subproblems") or () for p in _problem_parts(sub)]]


@pytest.mark.parametrize("with_good_name", [False, True])
def test_ca_side_validation_failure_is_shown_and_stored(
    cli: Cli, pebble: PebbleServer, with_good_name: bool
) -> None:
    cli.register()
    bad = f"unanswered-{secrets.token_hex(4)}.example.com"
    _point_name_at_nothing(pebble, bad)
    names = [bad, f"good-{secrets.token_hex(4)}.example.com"] if with_good_name else [bad]
    proc = cli("cert", "request", *names, "--wait", check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == errors[0], "the error is the last word"
    line = errors[0]
    assert bad in line and "connection" in line, line  # the CA's problem: name, type, detail

    details = cli.json("cert", "show", "1")
    assert details["status"] == "failed"
    assert details["names"] == names
    attempt = details["attempts"][-1]
    assert attempt["state"] == "failed"
    assert attempt["error"]
    problem = attempt["problem"]
    assert problem is not None, attempt
    # Pebble puts the failed challenge's problem on the order, without an identifier;
    # its detail names the URL it could not fetch.
    found = [p for p in _problem_parts(problem) if p.get("identifier") == bad or bad in p["detail"]]
    assert found, problem
    assert found[0]["type"] == PROBLEM + "connection"
    assert found[0]["detail"]
    shown = cli("cert", "show", "1").stdout
    assert PROBLEM + "connection" in shown or problem["type"] in shown
    assert [c["id"] for c in cli.json("cert", "list", "--status", "failed")] == [1]
