"""Key types, key policies, revocation reasons and export formats, in the user's spelling."""

from __future__ import annotations

from enum import StrEnum

from certbroker.domain.errors import UsageError


class KeyType(StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA2048 = "rsa2048"
    RSA3072 = "rsa3072"
    RSA4096 = "rsa4096"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(k.value for k in cls)
            raise UsageError(f"unknown key type {text!r}: choose one of {choices}") from None

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("rsa")

    @property
    def rsa_bits(self) -> int:
        return int(self.value[3:])


class KeyPolicy(StrEnum):
    """What key a certificate gets when it is (re)issued."""

    NEW = "new"
    REUSE = "reuse"
    IMPORTED = "imported"
    CSR = "csr"  # a device keeps its key; the broker holds only its CSR


class RevocationReason(StrEnum):
    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"

    @property
    def code(self) -> int:
        """RFC 5280 CRLReason code."""
        return {
            "unspecified": 0,
            "keyCompromise": 1,
            "affiliationChanged": 3,
            "superseded": 4,
            "cessationOfOperation": 5,
        }[self.value]


class ExportFormat(StrEnum):
    PEM = "pem"
    FULLCHAIN = "fullchain"
    COMBINED = "combined"
    DER = "der"
    PKCS12 = "pkcs12"
    JKS = "jks"

    @classmethod
    def parse(cls, text: str) -> ExportFormat:
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise UsageError(f"unknown export format {text!r}: choose one of {choices}") from None

    @property
    def needs_key(self) -> bool:
        return self in (ExportFormat.COMBINED, ExportFormat.PKCS12, ExportFormat.JKS)

    @property
    def needs_password(self) -> bool:
        return self in (ExportFormat.PKCS12, ExportFormat.JKS)
