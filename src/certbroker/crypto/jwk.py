"""Keys as JOSE JWKs, the form ACME signs with and some clients export account keys in."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwa import ES256, ES384, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from certbroker.crypto.keys import PrivateKey
from certbroker.domain.errors import UsageError


def jwk_for(key: PrivateKey) -> tuple[JWK, JWASignature]:
    """The JWK and the JWS algorithm ACME uses for this key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return JWKRSA(key=key), RS256
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = ES384 if key.curve.name == "secp384r1" else ES256
        return JWKEC(key=key), alg
    raise UsageError("account keys must be EC P-256/P-384 or RSA")


def private_key_to_jwk(key: PrivateKey) -> bytes:
    jwk, _ = jwk_for(key)
    return (json.dumps(jwk.to_json(), indent=2) + "\n").encode()
