"""dns-lexicon providers: the provider list and options, the generated docs/dns-providers.md,
and TXT records written through lexicon's route53 and powerdns providers.

Route 53 is AWS's hosted API, which cannot run here (no internet, no AWS account): moto in
server mode stands in for it, reached through botocore's AWS_ENDPOINT_URL_ROUTE_53 (lexicon's
route53 provider has no endpoint option). PowerDNS's error answers come from a small local
HTTP server that answers every request with one status.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from certbroker.dns.lexicon_catalog import ProviderOption, list_providers, provider_options
from certbroker.dns.lexicon_provider import LexiconProvider
from certbroker.domain.errors import PermanentError, TransientError, UsageError
from tests.support.ports import free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "dns-providers.md"
NAME = "_acme-challenge.www.example.com"
SECRET = "testing-secret-value"
CREDENTIALS = {"auth_access_key": "testing", "auth_access_secret": "testing"}


# --- the provider list, options and the generated documentation -----------------------


def _doc_sections() -> dict[str, str]:
    """docs/dns-providers.md split at its '### provider' headings."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^### (\S+)\s*$", text, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_lexicon_provider_and_option_is_documented() -> None:
    """A dns-lexicon upgrade that adds a provider or an option fails here until
    scripts/dns_providers_doc.py is run again."""
    sections = _doc_sections()
    providers = list_providers()
    assert len(providers) > 50
    assert sorted(sections) == sorted(providers)
    for provider in providers:
        options = provider_options(provider)
        if provider == "auto":  # documented by rule, not one row per option of every provider
            options = [o for o in options if not o.name.startswith("auto_")]
        for option in options:
            assert option.cli_flag in sections[provider], (provider, option.name)
            assert f"`{option.env}`" in sections[provider], (provider, option.name)
    for provider, usable in providers.items():
        marked = "Not installed with certbroker" in sections[provider]
        assert marked == (not usable), provider
    intro = DOC.read_text(encoding="utf-8").split("### ", 1)[0]
    assert "## rfc2136" in intro and "--tsig-secret" in intro
    assert "certbroker dns add NAME --provider" in intro
    assert "certbroker dns test NAME --zone" in intro


def test_list_providers_is_sorted_with_availability() -> None:
    providers = list_providers()
    assert list(providers) == sorted(providers)
    assert providers["route53"] is True  # certbroker depends on dns-lexicon[route53]
    assert providers["powerdns"] is True
    assert all(isinstance(usable, bool) for usable in providers.values())


def test_powerdns_options() -> None:
    options = {o.name: o for o in provider_options("powerdns")}
    assert options["auth_token"] == ProviderOption(
        name="auth_token",
        help="specify token for authentication",
        env="LEXICON_POWERDNS_AUTH_TOKEN",
        secret=True,
    )
    assert options["auth_token"].cli_flag == "--auth-token"
    assert options["pdns_server"].secret is False
    assert options["pdns_server"].env == "LEXICON_POWERDNS_PDNS_SERVER"
    assert "pdns_server_id" in options


@pytest.mark.parametrize(
    ("provider", "option", "secret"),
    [
        ("route53", "auth_access_key", True),  # an access key ID counts as secret
        ("route53", "auth_access_secret", True),
        ("route53", "auth_username", True),  # "alternative way to specify the ACCESS_KEY"
        ("route53", "zone_id", False),
        ("cloudflare", "auth_username", False),  # an e-mail address
        ("cloudflare", "zone_id", False),  # its help mentions "API token"
        ("aliyun", "auth_key_id", True),
        ("infoblox", "auth_psw", True),
        ("googleclouddns", "auth_service_account_info", True),
        ("googleclouddns", "private_zone", False),  # a switch
        ("namecheap", "auth_username", False),
    ],
)
def test_secret_options(provider: str, option: str, secret: bool) -> None:
    options = {o.name: o for o in provider_options(provider)}
    assert options[option].secret is secret


def test_switches_defaults_and_choices() -> None:
    namecheap = {o.name: o for o in provider_options("namecheap")}
    assert namecheap["auth_sandbox"].flag is True
    assert namecheap["auth_client_ip"].default == "127.0.0.1"
    ovh = {o.name: o for o in provider_options("ovh")}
    assert "ovh-eu" in ovh["auth_entrypoint"].choices


def test_unknown_provider_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="certbroker dns providers"):
        provider_options("no-such-provider")
    with pytest.raises(UsageError, match=r"did you mean route53"):
        provider_options("route54")
    with pytest.raises(UsageError, match="certbroker dns providers"):
        LexiconProvider("no-such-provider", {})


def test_unknown_or_unusable_option_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--auth-tokn") as caught:
        LexiconProvider("powerdns", {"auth_tokn": SECRET})
    assert SECRET not in str(caught.value)
    assert "--auth-token" in str(caught.value)
    with pytest.raises(UsageError, match="true or false"):
        LexiconProvider("namecheap", {"auth_sandbox": "maybe"})
    with pytest.raises(UsageError, match="ovh-eu"):
        LexiconProvider("ovh", {"auth_entrypoint": "mars"})


def test_repr_shows_no_option_values() -> None:
    provider = LexiconProvider("powerdns", {"auth_token": SECRET, "pdns_server": "http://x"})
    assert SECRET not in repr(provider)
    assert provider.check_servers() == ()


# --- Route 53 through moto ------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, endpoint: str) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE_53", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # a closed port fails at once


@pytest.fixture
def route53(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A boto3 Route 53 client on a freshly reset moto, where lexicon's route53 goes too."""
    reset = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(reset, timeout=10):
        pass
    _aws_env(monkeypatch, tmp_path, moto_url)
    return boto3.client("route53", aws_access_key_id="testing", aws_secret_access_key="testing")


def _zone(client: Any, name: str) -> str:
    response = client.create_hosted_zone(Name=f"{name}.", CallerReference=name)
    return str(response["HostedZone"]["Id"])


def _txt(client: Any, zone_id: str) -> dict[str, list[str]]:
    sets = client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    return {
        s["Name"]: sorted(r["Value"] for r in s["ResourceRecords"])
        for s in sets
        if s["Type"] == "TXT"
    }


def test_route53_round_trip(route53: Any) -> None:
    zone_id = _zone(route53, "example.com")
    provider = LexiconProvider("route53", CREDENTIALS)
    provider.add_txt(NAME, "v1")
    provider.add_txt(NAME, "v2")
    provider.add_txt(NAME, "v2")  # again, as after a crash: still one v2
    provider.remove_txt(NAME, "v1")
    assert _txt(route53, zone_id) == {f"{NAME}.": ['"v2"']}
    provider.remove_txt(NAME, "v1")  # absent is not an error
    provider.remove_txt(NAME, "v2")
    assert _txt(route53, zone_id) == {}


def test_route53_delegated_zone(route53: Any) -> None:
    """lab.example.com is its own hosted zone: lexicon would take example.com (the
    registered domain) unless told the zone."""
    parent = _zone(route53, "example.com")
    lab = _zone(route53, "lab.example.com")
    name = "_acme-challenge.host.lab.example.com"
    LexiconProvider("route53", CREDENTIALS, zone="lab.example.com").add_txt(name, "explicit")
    LexiconProvider("route53", CREDENTIALS, zones=["example.com", "lab.example.com"]).add_txt(
        name, "from-zones"
    )
    assert _txt(route53, lab) == {f"{name}.": ['"explicit"', '"from-zones"']}
    assert _txt(route53, parent) == {}
    LexiconProvider("route53", CREDENTIALS).add_txt(name, "guessed")  # lexicon's own guess
    assert _txt(route53, parent) == {f"{name}.": ['"guessed"']}


def test_route53_account_zone_that_is_not_a_hosted_zone(route53: Any) -> None:
    """An account that is the default for www.example.com, whose zone is example.com:
    the provider has no zone www.example.com, so lexicon's own guess is used."""
    zone_id = _zone(route53, "example.com")
    LexiconProvider("route53", CREDENTIALS, zones=["www.example.com"]).add_txt(NAME, "v")
    assert _txt(route53, zone_id) == {f"{NAME}.": ['"v"']}


def test_route53_missing_zone_is_permanent(route53: Any) -> None:
    with pytest.raises(PermanentError, match=r"No domain found.*--auth-access-key"):
        LexiconProvider("route53", CREDENTIALS).add_txt("_acme-challenge.example.org", "v")


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [("AccessDenied", 403, PermanentError), ("Throttling", 400, TransientError)],
)
def test_route53_failures_lexicon_only_logs_are_raised(
    route53: Any, monkeypatch: pytest.MonkeyPatch, code: str, status: int, error: type
) -> None:
    """lexicon's route53 catches a failed change, logs it and returns False (or, for a
    delete, True): certbroker must still fail, as the error says."""
    zone_id = _zone(route53, "example.com")
    real_call = BaseClient._make_api_call

    def refuse_changes(self: BaseClient, operation: str, params: Any) -> Any:
        if operation == "ChangeResourceRecordSets":
            answer = {"Error": {"Code": code, "Message": "no"}}
            raise ClientError({**answer, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
        return real_call(self, operation, params)

    provider = LexiconProvider("route53", CREDENTIALS)
    provider.add_txt(NAME, "v1")
    monkeypatch.setattr(BaseClient, "_make_api_call", refuse_changes)
    with pytest.raises(error, match=code) as caught:
        provider.add_txt(NAME, "v2")
    assert (error is TransientError) == isinstance(caught.value, TransientError)
    with pytest.raises(error, match=code):
        provider.remove_txt(NAME, "v1")
    assert _txt(route53, zone_id) == {f"{NAME}.": ['"v1"']}


def test_route53_unreachable_is_transient_and_keeps_the_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _aws_env(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}")  # nothing listens
    provider = LexiconProvider(
        "route53", {"auth_access_key": "AKIDTESTING", "auth_access_secret": SECRET}
    )
    with pytest.raises(TransientError) as caught:
        provider.add_txt(NAME, "v1")
    assert "route53" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert "AKIDTESTING" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_names_and_zones_lexicon_cannot_address() -> None:
    """Refused before any request: these fail without a server to ask."""
    provider = LexiconProvider("route53", CREDENTIALS, zone="example.internal")
    with pytest.raises(PermanentError, match="rfc2136"):
        provider.add_txt("_acme-challenge.host.example.internal", "v")
    with pytest.raises(PermanentError, match="rfc2136"):
        LexiconProvider("route53", CREDENTIALS).add_txt("_acme-challenge.host.internal", "v")
    provider = LexiconProvider("route53", CREDENTIALS, zone="example.com")
    with pytest.raises(PermanentError, match=r"not in its zone example\.com"):
        provider.add_txt("_acme-challenge.example.org", "v")


def test_no_public_suffix_list_download(
    route53: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """tldextract would fetch the public suffix list from the internet first (lexicon
    builds a fresh TLDExtract per call); certbroker has it use the bundled snapshot."""
    monkeypatch.delenv("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", raising=False)
    monkeypatch.setenv("TLDEXTRACT_CACHE_PATH", str(tmp_path / "tld-cache"))  # nothing cached
    fetched: list[str] = []

    def refuse(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        fetched.append(str(request.url))
        raise requests.ConnectionError("no internet in this test")

    monkeypatch.setattr(requests.Session, "send", refuse)
    zone_id = _zone(route53, "example.com")
    with caplog.at_level(logging.DEBUG):
        LexiconProvider("route53", CREDENTIALS).add_txt(NAME, "offline")
    assert fetched == []
    assert not [r for r in caplog.records if r.name.startswith("tldextract")]
    assert _txt(route53, zone_id) == {f"{NAME}.": ['"offline"']}


# --- PowerDNS error answers -----------------------------------------------------------


@pytest.fixture
def answering() -> Iterator[Any]:
    """Start an HTTP server that answers everything with (status, reason); yields a function
    that starts one and returns its URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, reason: str) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = json.dumps({"error": reason}).encode()
                self.send_response(status, reason)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_powerdns_rejected_key_is_permanent_and_names_the_option(answering: Any) -> None:
    # The reason phrase repeats the key, as a careless API might: it must not reach the message.
    url = answering(401, f"Unauthorized key {SECRET}")
    provider = LexiconProvider("powerdns", {"auth_token": SECRET, "pdns_server": url})
    with pytest.raises(PermanentError) as caught:
        provider.add_txt(NAME, "v1")
    message = str(caught.value)
    assert not isinstance(caught.value, TransientError)
    assert "--auth-token" in message and "powerdns" in message
    assert "401" in message
    assert SECRET not in message


def test_powerdns_server_error_is_transient(answering: Any) -> None:
    url = answering(503, "Service Unavailable")
    provider = LexiconProvider("powerdns", {"auth_token": SECRET, "pdns_server": url})
    with pytest.raises(TransientError, match="503"):
        provider.remove_txt(NAME, "v1")


def test_powerdns_other_client_error_is_permanent(answering: Any) -> None:
    url = answering(422, "Unprocessable Entity")
    provider = LexiconProvider("powerdns", {"auth_token": SECRET, "pdns_server": url})
    with pytest.raises(PermanentError, match="422") as caught:
        provider.add_txt(NAME, "v1")
    assert not isinstance(caught.value, TransientError)
