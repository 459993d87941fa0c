"""ACME for one account, on top of `acme.client.ClientNetwork` (JWS signing and nonces).

Orders, authorizations and challenges are read as plain JSON into small dataclasses,
so the services never see josepy objects. badNonce is retried here (the library retries
only once); every other failure becomes a TransientError or a PermanentError carrying
the CA's problem document.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from acme import challenges as acme_challenges
from acme import errors as acme_errors
from acme import jws as acme_jws
from acme import messages
from acme.client import ClientNetwork
from cryptography import x509
from josepy.errors import DeserializationError
from josepy.interfaces import JSONDeSerializable
from josepy.json_util import decode_b64jose, encode_b64jose

from certbroker import __version__
from certbroker.ca.answers import (
    Answer,
    BadAnswer,
    NotJson,
    account_of,
    authorization_of,
    directory_of,
    order_of,
    order_urls,
    renewal_info_of,
)
from certbroker.crypto.jwk import jwk_for
from certbroker.crypto.keys import PrivateKey, load_private_key
from certbroker.domain.errors import (
    TRANSIENT_CODES,
    AcmeProblem,
    PermanentError,
    TransientError,
    UsageError,
)
from certbroker.ports import (
    AccountInfo,
    AuthorizationInfo,
    OrderInfo,
    RenewalInfo,
    RequestTimer,
)

log = logging.getLogger("certbroker.acme")

BAD_NONCE_RETRIES = 12
NETWORK_TIMEOUT = 30
T = TypeVar("T")

_directories: dict[tuple[str, str | None], dict[str, Any]] = {}
_directories_lock = threading.Lock()


class _Session(requests.Session):
    """A requests session that reads the environment (proxies, CA bundle, netrc) once per
    host instead of on every request: requests walks the whole environment and the proxy
    rules each time, about 0.2 ms, and an issuance makes about eight requests. A changed
    environment takes effect for a new client, as it would for a new process."""

    def __init__(self, timer: RequestTimer | None = None) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], Any] = {}
        self._timer = timer

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        """The request, timed for the ACME request-duration histogram."""
        if self._timer is None:
            return super().request(method, url, *args, **kwargs)
        started = time.perf_counter()
        status = "error"
        try:
            response = super().request(method, url, *args, **kwargs)
            status = str(response.status_code)
            return response
        finally:
            host = urlsplit(url if isinstance(url, str) else url.decode()).hostname or "?"
            verb = method if isinstance(method, str) else method.decode()
            self._timer.observe(host, verb.upper(), status, time.perf_counter() - started)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if proxies:  # per-request proxies: never asked for here, so not cached
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        scheme, _, rest = str(url).partition("://")
        key = (scheme, rest.split("/", 1)[0], stream, verify, cert)
        found = self._environment.get(key)
        if found is None:
            found = super().merge_environment_settings(url, proxies, stream, verify, cert)
            self._environment[key] = found
        return {**found, "proxies": dict(found["proxies"])}


class _NotADirectory(Exception):
    """The directory URL answered, but not with an ACME directory."""


class _Json(JSONDeSerializable):
    """A plain dict as a JWS payload."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_partial_json(self) -> dict[str, Any]:
        return self.data

    @classmethod
    def from_json(cls, jobj: Any) -> _Json:
        return cls(dict(jobj))


def _problem(err: messages.Error) -> AcmeProblem:
    ident = err.identifier.value if err.identifier is not None else None
    subs = tuple(_problem(s) for s in (err.subproblems or ()))
    return AcmeProblem(type=err.typ, detail=err.detail or "", identifier=ident, subproblems=subs)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class AcmeCA:
    """One ACME account at one CA. Not shared between threads (each worker has its own)."""

    def __init__(
        self,
        directory_url: str,
        key: PrivateKey,
        account_uri: str | None = None,
        ca_bundle: str | None = None,
        timer: RequestTimer | None = None,
    ) -> None:
        self.directory_url = directory_url
        self.key = key
        self.account_uri = account_uri
        self.ca_bundle = ca_bundle
        jwk, alg = jwk_for(key)
        self.jwk = jwk
        verify: Any = ca_bundle if ca_bundle else True
        self.net = ClientNetwork(
            key=jwk,
            alg=alg,
            verify_ssl=verify,
            user_agent=f"certbroker/{__version__}",
            timeout=NETWORK_TIMEOUT,
        )
        session = _Session(timer)
        for prefix, adapter in self.net.session.adapters.items():
            session.mount(prefix, adapter)
        self.net.session = session
        if account_uri:
            self.net.account = messages.RegistrationResource(
                uri=account_uri, body=messages.Registration()
            )

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(BAD_NONCE_RETRIES):
            try:
                return fn()
            except messages.Error as err:
                if err.code == "badNonce" and attempt + 1 < BAD_NONCE_RETRIES:
                    log.debug("badNonce on %s, retrying (%d)", what, attempt + 1)
                    continue
                problem = _problem(err)
                code = problem.code
                message = f"the CA refused to {what}: {problem}"
                if code in TRANSIENT_CODES:
                    raise TransientError(message, problem) from None
                raise PermanentError(message, problem) from None
            except acme_errors.ConflictError as err:
                raise PermanentError(f"the CA refused to {what}: conflict at {err}") from None
            except requests.exceptions.SSLError as err:
                raise PermanentError(
                    f"cannot verify the TLS certificate of the CA at {self.directory_url} "
                    f"({_short(err)}); for a CA on a private PKI pass --ca-bundle PEM"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
                raise TransientError(
                    f"cannot reach the CA at {self.directory_url} to {what}: {_short(err)}"
                ) from None
            except acme_errors.ClientError as err:
                response = err.args[0] if err.args else None
                status = getattr(response, "status_code", None)
                message = f"the CA answered {status or 'unexpectedly'} to {what}"
                if isinstance(status, int) and status >= 500:
                    raise TransientError(message) from None
                raise PermanentError(message) from None
            except NotJson as err:  # a proxy's or maintenance page: it passes
                raise TransientError(f"the CA's answer to {what} is not ACME: {err}") from None
            except BadAnswer as err:
                message = f"the CA's answer to {what} is not valid ACME: {err}"
                raise PermanentError(message) from None
            except (ValueError, KeyError, DeserializationError) as err:
                raise PermanentError(
                    f"the CA's answer to {what} is not valid ACME ({_short(err)})"
                ) from None
        raise AssertionError("unreachable")

    def directory(self) -> dict[str, Any]:
        """The CA's directory, fetched once per process and CA."""
        cache_key = (self.directory_url, self.ca_bundle)
        with _directories_lock:
            cached = _directories.get(cache_key)
        if cached is not None:
            return cached

        def fetch() -> dict[str, Any]:
            try:
                response = self.net.get(self.directory_url)
            except acme_errors.ClientError as err:
                what = err.args[0] if err.args else None
                if isinstance(what, tuple):  # (response, why its JSON is no problem document)
                    what = what[0]
                status = getattr(what, "status_code", None)
                if isinstance(status, int) and status >= 500:
                    raise
                # A 4xx, or a 200 that is not JSON (the library says which Content-Type).
                raise _NotADirectory(f"it answered {status or what}") from None
            except messages.Error as err:
                if err.code in TRANSIENT_CODES:
                    raise
                raise _NotADirectory(f"it answered with the problem {err.code}") from None
            try:
                answer = Answer.of(response, self.directory_url)
            except NotJson:
                raise _NotADirectory("it answered something that is not JSON") from None
            if not isinstance(answer.value, dict) or "newOrder" not in answer.value:
                raise _NotADirectory("its JSON has no newOrder")
            return directory_of(answer)

        try:
            data = self._call("send its directory", fetch)
        except _NotADirectory as err:
            # The user gave the wrong URL: a usage error, not a failing CA.
            raise UsageError(
                f"{self.directory_url} is not an ACME directory ({err}); give the CA's "
                "directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory"
            ) from None
        with _directories_lock:
            _directories[cache_key] = data
        return data

    def _post(self, url: str, payload: dict[str, Any] | None) -> requests.Response:
        obj = _Json(payload) if payload is not None else None
        response: requests.Response = self.net.post(
            url, obj, new_nonce_url=self.directory()["newNonce"]
        )
        return response

    def _post_as_get(self, url: str) -> requests.Response:
        response: requests.Response = self.net.post(
            url, None, new_nonce_url=self.directory()["newNonce"]
        )
        return response

    # -- account -------------------------------------------------------------------------

    def terms_of_service(self) -> str | None:
        meta = self.directory().get("meta") or {}
        tos = meta.get("termsOfService")
        return str(tos) if tos else None

    def external_account_required(self) -> bool:
        meta = self.directory().get("meta") or {}
        return bool(meta.get("externalAccountRequired"))

    def _account_info(self, response: requests.Response, uri: str | None = None) -> AccountInfo:
        answer = Answer.of(response, uri or response.url)
        location = response.headers.get("Location") or uri or self.account_uri
        if not location:
            raise BadAnswer(answer.url, "a Location header naming the account", "none")
        info = account_of(answer, location)
        return dataclasses.replace(info, terms_of_service=self.terms_of_service())

    def register(
        self, emails: Sequence[str], agree_tos: bool, eab: tuple[str, str] | None
    ) -> AccountInfo:
        payload: dict[str, Any] = {
            "contact": [f"mailto:{e}" for e in emails],
            "termsOfServiceAgreed": agree_tos,
        }
        directory = self.directory()
        if eab is not None:
            kid, hmac_key = eab
            try:
                binding = messages.ExternalAccountBinding.from_data(
                    account_public_key=self.jwk.public_key(),
                    kid=kid,
                    hmac_key=hmac_key,
                    directory=messages.Directory.from_json(directory),
                )
            except (ValueError, TypeError) as err:
                raise UsageError(
                    f"--eab-hmac-key is not a base64url key ({_short(err)}); "
                    "copy it exactly as the CA shows it"
                ) from None
            payload["externalAccountBinding"] = binding

        def do() -> AccountInfo:
            self.net.account = None
            response = self._post(directory["newAccount"], payload)
            info = self._account_info(response)
            self._set_account(info.uri)
            return info

        return self._call("register the account", do)

    def _set_account(self, uri: str) -> None:
        self.account_uri = uri
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def find_account(self) -> AccountInfo:
        def do() -> AccountInfo:
            self.net.account = None
            response = self._post(self.directory()["newAccount"], {"onlyReturnExisting": True})
            info = self._account_info(response)
            self._set_account(info.uri)
            return info

        return self._call("find the account for this key", do)

    def _require_account(self) -> str:
        if not self.account_uri:
            raise UsageError("this account has no URL at the CA; register or import it first")
        return self.account_uri

    def query_account(self) -> AccountInfo:
        uri = self._require_account()
        return self._call(
            "show the account", lambda: self._account_info(self._post_as_get(uri), uri)
        )

    def update_contacts(self, emails: Sequence[str]) -> AccountInfo:
        uri = self._require_account()
        payload = {"contact": [f"mailto:{e}" for e in emails]}
        return self._call(
            "update the account", lambda: self._account_info(self._post(uri, payload), uri)
        )

    def deactivate(self) -> AccountInfo:
        uri = self._require_account()
        payload = {"status": "deactivated"}
        return self._call(
            "deactivate the account", lambda: self._account_info(self._post(uri, payload), uri)
        )

    def change_key(self, new_key_pem: bytes) -> None:
        """RFC 8555 section 7.3.5: the inner JWS is signed by the new key, the outer by the old."""
        uri = self._require_account()
        new_key = load_private_key(new_key_pem, "new account key")
        new_jwk, new_alg = jwk_for(new_key)
        url = self.directory().get("keyChange")
        if not url:
            raise PermanentError(
                f"the CA at {self.directory_url} does not offer account key rollover (its "
                "directory names no keyChange); keep the current key, or register a new "
                "account with the new key and move the certificates to it"
            )
        inner_payload = json.dumps(
            {"account": uri, "oldKey": self.jwk.public_key().to_partial_json()}
        ).encode()

        def do() -> None:
            inner = acme_jws.JWS.sign(inner_payload, key=new_jwk, alg=new_alg, nonce=None, url=url)
            self.net.post(url, inner, new_nonce_url=self.directory()["newNonce"])

        try:
            self._call("change the account key", do)
        except PermanentError as err:
            # step-ca lists keyChange but answers it "not implemented" (as rejectedIdentifier).
            problem = err.problem
            unsupported = problem is not None and "not implemented" in problem.detail.lower()
            raise PermanentError(
                f"the CA at {self.directory_url} "
                + (
                    "does not support account key rollover"
                    if unsupported
                    else "refused the key change"
                )
                + f" ({problem or err}); the account keeps its current key, here and at the CA",
                problem,
            ) from None
        self.key = new_key
        self.jwk = new_jwk
        self.net.key = new_jwk
        self.net.alg = new_alg

    # -- orders --------------------------------------------------------------------------

    def _order_info(self, response: requests.Response, url: str | None = None) -> OrderInfo:
        answer = Answer.of(response, url or response.url)
        location = response.headers.get("Location") or url
        if not location:
            raise BadAnswer(answer.url, "a Location header naming the new order", "none")
        return order_of(answer, location, _retry_after(response))

    def supports_renewal_info(self) -> bool:
        return bool(self.directory().get("renewalInfo"))

    def renewal_info(self, cert_id: str) -> RenewalInfo:
        """GET <renewalInfo>/<certID>: the suggested window, and when to ask again."""
        base = str(self.directory()["renewalInfo"]).rstrip("/")

        def fetch() -> RenewalInfo:
            url = f"{base}/{cert_id}"
            response = self.net.get(url)
            return renewal_info_of(Answer.of(response, url), _retry_after(response))

        return self._call("send renewal information", fetch)

    def profiles(self) -> dict[str, str]:
        """The ACME profiles the directory advertises (meta.profiles): name -> what it is."""
        meta = self.directory().get("meta") or {}
        offered = meta.get("profiles") or {}
        return {str(k): str(v) for k, v in offered.items()} if isinstance(offered, dict) else {}

    def new_order(
        self, names: Sequence[str], replaces: str | None = None, profile: str | None = None
    ) -> OrderInfo:
        payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": n} for n in names]}
        if replaces:
            payload["replaces"] = replaces  # RFC 9773 §5: the certificate this one renews
        if profile:
            payload["profile"] = profile  # draft-ietf-acme-profiles
        return self._call(
            "create the order",
            lambda: self._order_info(self._post(self.directory()["newOrder"], payload)),
        )

    def get_order(self, url: str) -> OrderInfo:
        return self._call("show the order", lambda: self._order_info(self._post_as_get(url), url))

    def account_orders(self) -> list[str]:
        """The account's `orders` list, page after page (at most 50 pages); none when the
        account names no orders URL (Let's Encrypt)."""

        def fetch() -> list[str]:
            if not self.account_uri:
                return []
            account = Answer.of(self._post_as_get(self.account_uri), self.account_uri)
            url = account.optional_text("orders")
            found: list[str] = []
            for _ in range(50):
                if not url:
                    break
                response = self._post_as_get(url)
                found += order_urls(Answer.of(response, url))
                url = response.links.get("next", {}).get("url")
            return found

        return self._call("list the account's orders", fetch)

    def get_authorization(self, url: str) -> AuthorizationInfo:
        def do() -> AuthorizationInfo:
            response = self._post_as_get(url)
            return authorization_of(Answer.of(response, url), url, _retry_after(response))

        return self._call("show the authorization", do)

    def key_authorization(self, token: str) -> str:
        chall = acme_challenges.HTTP01(token=decode_b64jose(token))
        return str(chall.key_authorization(self.jwk))

    def answer_challenge(self, url: str) -> None:
        self._call("accept the challenge answer", lambda: self._post(url, {}))

    def finalize(self, order: OrderInfo, csr_pem: bytes) -> OrderInfo:
        csr = x509.load_pem_x509_csr(csr_pem)
        from cryptography.hazmat.primitives.serialization import Encoding

        payload = {"csr": encode_b64jose(csr.public_bytes(Encoding.DER))}
        return self._call(
            "finalize the order",
            lambda: self._order_info(self._post(order.finalize, payload), order.url),
        )

    def download_certificate(self, url: str) -> str:
        def do() -> str:
            text = self._post_as_get(url).text
            try:
                x509.load_pem_x509_certificates(text.encode())
            except ValueError:
                found = "an empty body" if not text.strip() else "something else"
                raise BadAnswer(url, "a PEM certificate chain", found) from None
            return text

        return self._call("send the certificate", do)

    def revoke(self, cert_pem: bytes, reason: int) -> None:
        cert = x509.load_pem_x509_certificate(cert_pem)
        from cryptography.hazmat.primitives.serialization import Encoding

        payload = {
            "certificate": encode_b64jose(cert.public_bytes(Encoding.DER)),
            "reason": reason,
        }
        url = self.directory().get("revokeCert")
        if not url:
            raise PermanentError(
                f"the CA at {self.directory_url} does not offer revocation (its directory "
                "names no revokeCert)"
            )
        self._call("revoke the certificate", lambda: self._post(url, payload))


def _short(err: BaseException) -> str:
    text = str(err)
    # requests' messages nest the whole URL and a repr chain; the last part is the reason.
    if "Caused by" in text:
        text = text.split("Caused by", 1)[1].strip(" ()'\"")
    return text[:300]
