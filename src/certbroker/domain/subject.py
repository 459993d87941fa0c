"""The optional subject fields of a certificate (organisation, country, …).

ACME CAs take the names from subjectAltName and ignore most of the subject, but some
internal CAs (and some auditors) want organisation fields, so they can be set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from certbroker.domain.errors import UsageError

# RFC 5280 upper bound for most name attributes, and for the CN in particular.
MAX_FIELD_LENGTH = 64


@dataclass(frozen=True)
class Subject:
    """Optional subject fields of a CSR; the CN always comes from the first name."""

    country: str | None = None
    state: str | None = None
    city: str | None = None
    org: str | None = None
    ou: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        self.validate()
        if self.country is not None:
            object.__setattr__(self, "country", self.country.upper())

    def as_dict(self) -> dict[str, str]:
        """The set fields, as stored with the certificate."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if not value.strip():
                raise UsageError(f"subject {f.name} is empty; leave it out or give a value")
            if len(value) > MAX_FIELD_LENGTH:
                raise UsageError(
                    f"subject {f.name} is {len(value)} characters long; "
                    f"the limit is {MAX_FIELD_LENGTH}"
                )
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
                raise UsageError(f"subject {f.name} contains control characters")
        if self.country is not None and not (
            len(self.country) == 2 and self.country.isascii() and self.country.isalpha()
        ):
            raise UsageError(
                f"subject country {self.country!r} is not a two-letter ISO 3166 code (e.g. DE)"
            )
        # emailAddress is an IA5String, so it must be ASCII as well.
        if self.email is not None and ("@" not in self.email or not self.email.isascii()):
            raise UsageError(f"subject email {self.email!r} is not an email address")
