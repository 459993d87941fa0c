"""Hosted DNS providers (Route 53, Cloudflare, PowerDNS, OVH, ...) through dns-lexicon.

One `LexiconProvider` is one DNS account: a lexicon provider name and its options
(credentials and settings, as strings). Every add or remove builds a lexicon `Client`,
which authenticates, makes the change, and is closed again: nothing is kept open between
challenges.

Option values are credentials. They are never logged, never put into a message, and
scrubbed from whatever lexicon or the provider's API says before that reaches a message.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import requests

from certbroker.dns.lexicon_catalog import (
    ProviderOption,
    auto_target,
    install_hint,
    is_known,
    option_actions,
    provider_options,
)
from certbroker.domain.errors import CertbrokerError, PermanentError, TransientError, UsageError

log = logging.getLogger("certbroker.challenges")

_AUTH_CODES = frozenset(
    {  # botocore ClientError codes that mean the credential is wrong or lacks rights
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
_BUSY_CODES = frozenset(
    {  # botocore ClientError codes worth retrying
        "InternalError",
        "PriorRequestNotComplete",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
    }
)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_MAX_DETAIL = 400


# --- tldextract, logging ---------------------------------------------------------------

_prepared = False
_prepare_lock = threading.Lock()
_secret_values: set[str] = set()  # of every LexiconProvider made, for the log filter


def _prepare_libraries() -> None:
    """Make lexicon's helpers quiet and offline, once per process.

    lexicon's Client guesses a record's zone with tldextract (the public suffix list:
    "www.example.co.uk" -> "example.co.uk"), building a fresh `TLDExtract` on every call. By
    default tldextract downloads the list from publicsuffix.org / GitHub first; without
    internet that costs a logged traceback and ~0.3 s before it falls back to the snapshot
    bundled with tldextract. A certificate broker should not fetch code-like data from the
    internet behind the operator's back, and must work offline, so certbroker sets
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS to empty, which every new TLDExtract reads (empty
    means "download nothing"; tldextract 5.4 has it, releases without it would still
    download), and the bundled snapshot is used. An operator who
    wants a fresher list sets that variable to a file or mirror URL; certbroker keeps it.
    lexicon caches the parsed list under TLDEXTRACT_CACHE_PATH (default ~/.lexicon_tld_set)
    when it can write there and parses the snapshot again when it cannot; tldextract logs
    both that and any failed download as warnings, which are noise here, so its logger is
    silenced below errors.

    lexicon's providers log API payloads at debug level, which can hold credentials, so the
    `lexicon` logger is kept at WARNING unless configured otherwise; and urllib3 logs request
    URLs at debug level (some providers put the API key in the query string), so a filter
    scrubs the option values of every LexiconProvider from its records.
    """
    global _prepared
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    with _prepare_lock:
        if _prepared:
            return
        for name, level in (("tldextract", logging.ERROR), ("lexicon", logging.WARNING)):
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(level)
        logging.getLogger("urllib3.connectionpool").addFilter(_ScrubSecrets())
        _prepared = True


class _ScrubSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = tuple(_secret_values)
        if secrets:
            message = record.getMessage()
            scrubbed = _scrub(message, (("secret", secret) for secret in secrets))
            if scrubbed != message:
                record.msg, record.args = scrubbed, ()
        return True


def _replace_value(text: str, value: str, replacement: str) -> str:
    for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}:
        text = text.replace(form, replacement)
    return text


def _scrub(text: str, values: Iterable[tuple[str, str]]) -> str:
    for name, value in sorted(values, key=lambda item: -len(item[1])):
        text = _replace_value(text, value, f"<{name}>")
    return text


# --- the provider ------------------------------------------------------------------------


class _SignInRefused(PermanentError):
    """lexicon's AuthenticationError: a wrong credential, or no such zone in the account."""


class LexiconProvider:
    """A DnsProvider that writes TXT records through one dns-lexicon provider.

    `options` are the provider's options by lexicon name ("auth_token"), as strings; flags
    take "true"/"false". Without a zone lexicon puts each name into its registered domain,
    found with the public suffix list ("_acme-challenge.www.example.co.uk" ->
    "example.co.uk"), which is wrong for a zone delegated below it ("lab.example.com").
    `zone` fixes the zone of every name (a name outside it is refused); `zones` are the
    account's zones, the longest one holding a name being used for it, and when the provider
    says it has no such zone (the account is merely the default for a subdomain of its real
    zone) lexicon's own guess is tried next. Either way a zone must sit under a public
    suffix: lexicon cannot address "example.internal" (certbroker's rfc2136 provider can).

    Raises UsageError at once for an unknown provider, a missing optional dependency, or an
    option the provider does not have or cannot take; the DnsProvider methods raise
    PermanentError and TransientError.
    """

    def __init__(
        self,
        provider: str,
        options: Mapping[str, str],
        zone: str | None = None,
        ttl: int = 60,
        *,
        zones: Sequence[str] = (),
        account: str | None = None,
    ) -> None:
        self.provider = provider
        self.account = account
        self.zone = _zone_name(zone) if zone and zone.strip() else None
        self.zones = tuple(_zone_name(z) for z in zones if z.strip())
        self.ttl = ttl
        if not is_known(provider):
            raise UsageError(install_hint(provider))
        declared = {option.name: option for option in provider_options(provider)}
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise UsageError(
                f"the dns-lexicon provider {provider!r} has no option "
                + ", ".join(f"--{name.replace('_', '-')}" for name in unknown)
                + "; it takes "
                + (", ".join(o.cli_flag for o in declared.values()) or "no options")
            )
        self._credential_flags = tuple(
            o.cli_flag for o in declared.values() if o.secret or o.name.startswith("auth_")
        )
        # (name, value) pairs to scrub from messages: every secret, and every other value
        # long enough not to clash with ordinary words ("true", "1").
        self._scrub_values = tuple(
            (name, value)
            for name, value in options.items()
            if value and (declared[name].secret or len(value) >= 6)
        )
        self._options = self._lexicon_options(provider, declared, options)
        if provider == "route53" and not (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        ):
            # Route 53 is a global service (its endpoint lives in us-east-1), but boto3
            # refuses to build any client without a region.
            os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
        _secret_values.update(v for n, v in options.items() if v and declared[n].secret)

    def __repr__(self) -> str:  # never the option values
        return (
            f"LexiconProvider({self.provider!r}, account={self.account!r}, zone={self.zone!r}, "
            f"zones={self.zones!r})"
        )

    @staticmethod
    def _lexicon_options(
        provider: str, declared: Mapping[str, ProviderOption], options: Mapping[str, str]
    ) -> dict[str, Any]:
        """The options as lexicon's own CLI would hand them to the provider: typed, with its
        defaults (lexicon's Client, unlike its CLI, applies no argparse defaults)."""
        actions = {action.dest: action for action in option_actions(provider)}
        values: dict[str, Any] = {}
        for name, option in declared.items():
            action = actions[name]
            if name not in options:
                if action.default is not None and not option.flag:
                    values[name] = action.default
                continue
            raw = options[name]
            if option.flag:
                if raw.strip().lower() not in _TRUE | _FALSE:
                    raise UsageError(f"{option.cli_flag} is a switch; give true or false")
                values[name] = raw.strip().lower() in _TRUE
                continue
            value: Any = raw
            if callable(action.type):
                try:
                    value = action.type(raw)
                except (TypeError, ValueError):
                    shown = "" if option.secret else f" {raw!r}"
                    raise UsageError(f"{option.cli_flag}{shown} is not valid here") from None
            if option.choices and str(value) not in option.choices:
                raise UsageError(f"{option.cli_flag} must be one of {', '.join(option.choices)}")
            values[name] = value
        if provider != "auto":
            return {provider: _with_dashed_names(values)}
        # The auto provider finds the zone's provider from its NS records and hands over
        # "auto_<provider>_<option>" as that provider's option, but only from command-line
        # arguments: from a dict they have to sit under the provider's own name.
        scoped: dict[str, Any] = {"auto": {}}
        for name, value in values.items():
            target = auto_target(name)
            if target is None:
                scoped["auto"][name] = value
            else:
                scoped.setdefault(target[0], {})[target[1]] = value
        return {name: _with_dashed_names(values) for name, values in scoped.items()}

    @property
    def _who(self) -> str:
        if self.account:
            return f"DNS account {self.account!r} (dns-lexicon provider {self.provider})"
        return f"dns-lexicon provider {self.provider!r}"

    def check_servers(self) -> tuple[tuple[str, int], ...]:
        return ()  # the propagation check finds the zone's servers by walking the delegation

    def add_txt(self, name: str, value: str) -> None:
        fqdn = _absolute(name)
        doing = f"add the TXT record {fqdn} {value!r}"
        with self._operations(fqdn, doing) as ops:
            if self._present(ops, fqdn, value):
                # Retried after a crash, say. Not every provider lets an existing value be:
                # route53 against moto, for one, adds it a second time.
                log.debug("%s: the TXT record %s %r is there already", self._who, fqdn, value)
                return
            with self._translated(doing):
                done = ops.create_record("TXT", fqdn, value)
        if done is False:
            raise PermanentError(
                f"{self._who} could not {doing}: lexicon reported failure without a reason "
                "(its log may say more)"
            )
        log.debug("%s: added the TXT record %s", self._who, fqdn)

    def remove_txt(self, name: str, value: str) -> None:
        fqdn = _absolute(name)
        doing = f"remove the TXT record {fqdn} {value!r}"
        with self._operations(fqdn, doing) as ops:
            try:
                with self._translated(doing):
                    ops.delete_record(rtype="TXT", name=fqdn, content=value)
            except CertbrokerError:
                # Several lexicon providers (route53 among them) raise when the record is
                # not there; for certbroker absent is done. Anything else stands.
                if self._present(ops, fqdn, value) is False:
                    log.debug("%s: no TXT record %s %r to remove", self._who, fqdn, value)
                    return
                raise
        log.debug("%s: removed the TXT record %s", self._who, fqdn)

    def _present(self, ops: Any, fqdn: str, value: str) -> bool | None:
        """Whether `value` is among the TXT records at `fqdn`; None when the provider could
        not list them."""
        try:
            with self._translated(f"list the TXT records at {fqdn}"):
                records = ops.list_records("TXT", fqdn)
        except CertbrokerError as exc:
            log.debug("%s: %s", self._who, exc)
            return None
        return any(
            isinstance(record, Mapping) and _unquoted(record.get("content")) == value
            for record in records or ()
        )

    def _zone_candidates(self, fqdn: str, doing: str) -> list[str | None]:
        """The zones to try for `fqdn`, in order; None is lexicon's own guess."""
        if self.zone:
            if not _in_zone(fqdn, self.zone):
                raise PermanentError(
                    f"{self._who} cannot {doing}: {fqdn} is not in its zone {self.zone}"
                )
            return [self.zone]
        matching = [z for z in self.zones if _in_zone(fqdn, z)]
        if matching:
            return [max(matching, key=len), None]
        return [None]

    @contextmanager
    def _operations(self, fqdn: str, doing: str) -> Iterator[Any]:
        """An authenticated lexicon session for the zone of `fqdn`."""
        _prepare_libraries()
        tried: set[str] = set()
        refused: _SignInRefused | None = None
        for zone in self._zone_candidates(fqdn, doing):
            client = self._client(fqdn, zone, doing)
            resolved = str(client.config.resolve("lexicon:domain"))
            if resolved in tried:
                continue
            tried.add(resolved)
            try:
                with self._translated(f"sign in for the zone {resolved} to {doing}"):
                    ops = client.__enter__()
            except _SignInRefused as exc:
                refused = exc
                log.debug("%s: %s", self._who, exc)
                continue
            try:
                yield ops
            finally:
                try:
                    client.__exit__(None, None, None)
                except Exception as exc:  # a failed cleanup must not hide the result
                    log.debug("%s: cleanup failed: %s", self._who, type(exc).__name__)
            return
        assert refused is not None  # every candidate zone resolves to something, once
        raise refused

    def _client(self, fqdn: str, zone: str | None, doing: str) -> Any:
        """A lexicon Client for `zone`, or for the zone lexicon guesses from `fqdn`."""
        from lexicon.client import Client
        from lexicon.config import ConfigResolver

        config: dict[str, Any] = {
            "provider_name": self.provider,
            "domain": zone or fqdn,
            "ttl": self.ttl,
            **self._options,
        }
        if zone:
            # lexicon takes the registered domain of "domain" (example.com for
            # lab.example.com) as the zone; "delegated" names the zone below it, and equal to
            # the registered domain changes nothing.
            config["delegated"] = zone
        with self._translated(doing):
            client = Client(ConfigResolver().with_dict(config))  # type: ignore[no-untyped-call]
        resolved = str(client.config.resolve("lexicon:domain") or "")
        if not _is_zone(resolved) or not _in_zone(fqdn, resolved) or (zone and resolved != zone):
            raise PermanentError(
                f"{self._who} cannot {doing}: dns-lexicon takes the zone to be {resolved!r}"
                + (f", not {zone}" if zone else "")
                + ". lexicon finds zones with the public suffix list, so they must sit under "
                "a public suffix (example.com, example.co.uk); for a zone under another name "
                "use certbroker's rfc2136 provider"
            )
        return client

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """Turn whatever lexicon, requests or botocore raise into certbroker's errors, and
        the errors lexicon's providers only log (route53 does) into raised ones."""
        swallowed: list[BaseException] = []
        handler = _SwallowedErrors(swallowed)
        lexicon_logger = logging.getLogger("lexicon")
        lexicon_logger.addHandler(handler)
        try:
            yield
        except CertbrokerError:
            raise
        except Exception as exc:
            raise self._translate(exc, doing) from None
        finally:
            lexicon_logger.removeHandler(handler)
        if swallowed:
            raise self._translate(swallowed[-1], doing) from None

    def _translate(self, exc: BaseException, doing: str) -> CertbrokerError:
        from lexicon.exceptions import AuthenticationError, ProviderNotAvailableError

        detail = self._detail(exc)
        if isinstance(exc, ProviderNotAvailableError):
            return PermanentError(f"{self._who}: {detail}")
        credentials = ", ".join(self._credential_flags) or "the account's options"
        if isinstance(exc, AuthenticationError):
            return _SignInRefused(
                f"{self._who} refused to {doing} ({detail}): either the credential is wrong or "
                f"the account has no such zone; check {credentials} and the zone"
            )
        status = _http_status(exc)
        code = _error_code(exc)
        names = {cls.__name__ for cls in type(exc).__mro__}
        if (
            status in (401, 403)
            or code in _AUTH_CODES
            or names & {"NoCredentialsError", "PartialCredentialsError"}
        ):
            return PermanentError(
                f"{self._who} refused to {doing} ({detail}): the credential is wrong or may "
                f"not do this; check {credentials}"
            )
        if (
            _is_network_error(exc)
            or (status is not None and (status >= 500 or status == 429))
            or code in _BUSY_CODES
        ):
            return TransientError(
                f"{self._who} could not {doing}: the provider's API could not be reached or "
                f"is busy ({detail}); certbroker will try again"
            )
        if status == 404:
            return PermanentError(
                f"{self._who} could not {doing} ({detail}): the provider has no such zone or "
                "address; check that the zone is in this account, and the account's options"
            )
        return PermanentError(f"{self._who} could not {doing}: {detail}")

    def _detail(self, exc: BaseException) -> str:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        text = _scrub(text, self._scrub_values)
        text = _scrub(text, (("secret", value) for value in _secret_values))
        return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 3] + "..."


class _SwallowedErrors(logging.Handler):
    """Collects the exceptions lexicon's providers log instead of raising (route53 logs a
    failed change with exc_info and returns False), on this thread only."""

    def __init__(self, into: list[BaseException]) -> None:
        super().__init__(logging.ERROR)
        self.into = into
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.exc_info and record.exc_info[1] is not None:
            self.into.append(record.exc_info[1])


def _with_dashed_names(values: dict[str, Any]) -> dict[str, Any]:
    """Each option under its name and, for the odd provider that reads it so (powerdns reads
    "pdns-disable-notify", declared as --pdns-disable-notify), with dashes."""
    return {**{name.replace("_", "-"): value for name, value in values.items()}, **values}


def _absolute(name: str) -> str:
    fqdn = name.strip().rstrip(".").lower()
    if not _is_zone(fqdn):
        raise PermanentError(f"{name!r} is not an absolute DNS name")
    return fqdn


def _zone_name(zone: str) -> str:
    name = zone.strip().rstrip(".").lower()
    if not _is_zone(name):
        raise UsageError(f"{zone!r} is not a DNS zone name such as example.com")
    return name


def _is_zone(name: str) -> bool:
    labels = name.split(".")
    return len(labels) >= 2 and all(labels)


def _in_zone(fqdn: str, zone: str) -> bool:
    return fqdn == zone or fqdn.endswith("." + zone)


def _unquoted(content: Any) -> str | None:
    if not isinstance(content, str):
        return None
    if len(content) >= 2 and content[0] == content[-1] == '"':
        return content[1:-1]
    return content


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> int | None:
    for link in _chain(exc):
        response = getattr(link, "response", None)
        status = getattr(response, "status_code", None)  # requests
        if isinstance(status, int):
            return status
        if isinstance(response, dict):  # botocore ClientError
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def _error_code(exc: BaseException) -> str | None:
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if isinstance(code, str):
                return code
    return None


def _is_network_error(exc: BaseException) -> bool:
    for link in _chain(exc):
        if isinstance(
            link,
            ConnectionError
            | TimeoutError
            | socket.gaierror
            | requests.ConnectionError
            | requests.Timeout,
        ):
            return True
        names = {cls.__name__ for cls in type(link).__mro__}
        # botocore's (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...)
        # and dnspython's Timeout (lexicon's ddns provider), without importing either.
        if type(link).__module__.startswith(("botocore", "urllib3", "dns")) and names & {
            "ConnectionError",
            "HTTPClientError",
            "Timeout",
            "TimeoutError",
            "NewConnectionError",
            "ProtocolError",
        }:
            return True
    return False
