"""The DNS providers dns-lexicon ships, and each one's options as `certbroker dns add`
takes them: flags, environment variables, and which of them are secrets."""

from __future__ import annotations

import argparse
import difflib
import functools
from contextlib import suppress
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from certbroker.domain.errors import PermanentError, UsageError

LISTING_HINT = "`certbroker dns providers` lists them"
# Words in an option's name that mark it as a credential. Over-inclusive on purpose: a
# secret option is only masked when shown and stored sealed, while a missed one could leak.
_SECRET_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "pass",  # auth_pass (wedos), auth_pass_phrase (oci)
    "psw",  # auth_psw (infoblox)
    "key",  # api keys, and access key IDs (auth_key_id), which are treated as secret too
    "credential",
    "2fa",
    "otp",
    "service_account",  # googleclouddns: a service account JSON with its private key
)
# ... and words in its help that say a name-wise harmless option (auth_username) actually
# holds a key: route53's auth_username is the AWS access key ID, cloudxns's the API key.
_SECRET_HELP_WORDS = (
    "access_key",
    "access key",
    "api key",
    "api-key",
    "secret",
    "token",
)


@dataclass(frozen=True)
class ProviderOption:
    """One option of a lexicon provider, as `certbroker dns add` takes it."""

    name: str  # lexicon's name, e.g. "auth_token"; the flag is --auth-token
    help: str
    env: str  # where lexicon itself reads it: LEXICON_<PROVIDER>_<OPTION>
    secret: bool  # a credential: masked when shown, stored sealed
    flag: bool = False  # a switch without a value (true/false)
    default: str | None = None  # what lexicon's own CLI would use when not given
    choices: tuple[str, ...] = ()

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# --- lexicon's provider discovery -------------------------------------------------------


def _discovery() -> ModuleType:
    # dns-lexicon (3.x) has no public API that lists its providers: the listing lives in the
    # private module `lexicon._private.discovery` (its own Client and CLI use it), and the
    # public `lexicon.providers` package is deprecated ("removed in Lexicon 4"). So certbroker
    # uses the private module, and turns a change there into an error that says so.
    try:
        from lexicon._private import discovery

        for attribute in ("find_providers", "load_provider_module"):
            if not callable(getattr(discovery, attribute, None)):
                raise AttributeError(f"lexicon._private.discovery has no {attribute}()")
    except Exception as exc:  # ImportError, AttributeError: any change in lexicon's internals
        raise PermanentError(
            f"cannot list dns-lexicon's DNS providers ({type(exc).__name__}: {exc}); "
            f"certbroker was written for dns-lexicon 3.x and the installed version "
            f"({_lexicon_version()}) changed its provider discovery: install dns-lexicon 3.x "
            "or a certbroker release made for this one"
        ) from None
    return discovery


def _lexicon_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dns-lexicon")
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=1)
def _providers() -> tuple[tuple[str, bool], ...]:
    found = _discovery().find_providers()
    if not isinstance(found, dict) or not all(
        isinstance(name, str) and isinstance(usable, bool) for name, usable in found.items()
    ):
        raise PermanentError(
            f"dns-lexicon {_lexicon_version()} listed its providers in a form certbroker does "
            "not know; install dns-lexicon 3.x"
        )
    return tuple(sorted(found.items()))


def list_providers() -> dict[str, bool]:
    """Every DNS provider dns-lexicon ships, sorted by name -> usable (its optional
    dependencies, such as boto3 for route53, are installed)."""
    return dict(_providers())


def is_known(provider: str) -> bool:
    """Whether `provider` is usable; UsageError when lexicon has no such provider."""
    providers = list_providers()
    if provider not in providers:
        close = difflib.get_close_matches(provider, providers, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UsageError(f"{provider!r} is not a dns-lexicon DNS provider; {hint}{LISTING_HINT}")
    return providers[provider]


def install_hint(provider: str) -> str:
    return (
        f"the dns-lexicon provider {provider!r} needs optional dependencies that are not "
        f"installed; install them into certbroker's environment with "
        f"`pip install 'dns-lexicon[{provider}]'`"
    )


@functools.cache
def _provider_class(provider: str) -> Any:
    is_known(provider)  # never import a module named by an arbitrary string
    try:
        module = _discovery().load_provider_module(provider)
    except ImportError:
        raise UsageError(install_hint(provider)) from None
    provider_class = getattr(module, "Provider", None)
    if provider_class is None or not callable(getattr(provider_class, "configure_parser", None)):
        raise PermanentError(
            f"dns-lexicon {_lexicon_version()}'s provider module {provider!r} has no "
            "Provider.configure_parser(); install dns-lexicon 3.x"
        )
    return provider_class


@functools.cache
def option_actions(provider: str) -> tuple[argparse.Action, ...]:
    """The provider's options as lexicon's own CLI declares them."""
    parser = argparse.ArgumentParser(add_help=False)
    _provider_class(provider).configure_parser(parser)
    return tuple(
        action
        for action in parser._actions  # argparse has no public accessor for these
        if action.option_strings and action.help != argparse.SUPPRESS
    )


def _env_name(provider: str, name: str) -> str:
    if provider == "auto":
        # The auto provider passes "auto_<provider>_<option>" on to that provider, which
        # reads it from LEXICON_<PROVIDER>_<OPTION>.
        target = auto_target(name)
        if target is not None:
            provider, name = target
    return f"LEXICON_{provider}_{name}".upper().replace("-", "_")


def auto_target(name: str) -> tuple[str, str] | None:
    """For the auto provider: "auto_route53_auth_access_key" -> ("route53", "auth_access_key")."""
    if not name.startswith("auto_"):
        return None
    rest = name[len("auto_") :]
    for provider in sorted(list_providers(), key=len, reverse=True):
        if rest.startswith(provider + "_"):
            return provider, rest[len(provider) + 1 :]
    return None


def _is_secret(name: str, help_text: str, flag: bool) -> bool:
    if flag:
        return False
    lowered = name.lower()
    if any(word in lowered for word in _SECRET_WORDS):
        return True
    # Drop mentions of other options ("only used if --auth-token is empty") before reading
    # the help, and leave e-mail addresses alone ("email address (for Global API key only)").
    if not lowered.startswith("auth_"):
        return False  # cloudflare's zone_id: "(if set, API token can be scoped ...)"
    words = " ".join(w for w in help_text.lower().split() if not w.startswith("--"))
    return "email" not in words and any(word in words for word in _SECRET_HELP_WORDS)


def _help(action: argparse.Action) -> str:
    text = " ".join(str(action.help or "").split())
    if "%(" in text:
        with suppress(KeyError, TypeError, ValueError):
            text = text % {"default": action.default, "dest": action.dest, "prog": "lexicon"}
    return text


def _option(provider: str, action: argparse.Action) -> ProviderOption:
    flag = action.nargs == 0  # store_true and friends
    help_text = _help(action)
    default = action.default
    return ProviderOption(
        name=action.dest,
        help=help_text,
        env=_env_name(provider, action.dest),
        secret=_is_secret(action.dest, help_text, flag),
        flag=flag,
        default=None if default is None or flag else str(default),
        choices=tuple(str(c) for c in action.choices or ()),
    )


def provider_options(provider: str) -> list[ProviderOption]:
    """The options of the dns-lexicon provider `provider`, in lexicon's order.

    UsageError when lexicon has no such provider. lexicon says nothing about which options
    are required (a missing one fails only when the provider is used)."""
    return [_option(provider, action) for action in option_actions(provider)]
