"""ACME directories a user can name by a preset instead of a URL."""

from __future__ import annotations

from certbroker.domain.errors import UsageError

LETSENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DIRECTORY_PRESETS = {"letsencrypt": LETSENCRYPT, "letsencrypt-staging": LETSENCRYPT_STAGING}


def resolve_directory(text: str) -> str:
    """A directory URL, or the URL of a preset (`letsencrypt`, `letsencrypt-staging`)."""
    url = DIRECTORY_PRESETS.get(text.strip().lower(), text.strip())
    if not url.startswith(("https://", "http://")):
        presets = ", ".join(DIRECTORY_PRESETS)
        raise UsageError(
            f"--directory {text!r} is neither an ACME directory URL (https://…) "
            f"nor a preset ({presets})"
        )
    return url
