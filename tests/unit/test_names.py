"""DNS name normalization and validation: what is accepted, what is refused, and what it says."""

from __future__ import annotations

import pytest

from certbroker.domain.errors import UsageError
from certbroker.domain.names import MAX_NAMES, is_wildcard, normalize_name, validate_names

# -- accepted names -------------------------------------------------------------------------

NORMALIZED = [
    ("example.com", "example.com"),
    ("www.example.com", "www.example.com"),
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("  example.com  ", "example.com"),
    ("\texample.com.\n", "example.com"),
    ("a1-b2.example.com", "a1-b2.example.com"),
    ("123.example.com", "123.example.com"),
    ("a.b.c.d.e.example.com", "a.b.c.d.e.example.com"),
    ("example.co.uk", "example.co.uk"),
    # IDNA: Unicode labels become A-labels.
    ("bücher.example", "xn--bcher-kva.example"),
    ("Bücher.Example.", "xn--bcher-kva.example"),
    ("BÜCHER.example", "xn--bcher-kva.example"),
    ("münchen.de", "xn--mnchen-3ya.de"),
    ("é.com", "xn--9ca.com"),
    ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
    ("العربية.example", "xn--mgbcd4a2b0d2b.example"),
    # Non-transitional UTS #46 (IDNA 2008): 'ß' is kept, not mapped to 'ss'.
    ("straße.de", "xn--strae-oqa.de"),
    # UTS #46 mapping: full-width letters and ideographic full stops.
    ("ＥＸＡＭＰＬＥ。com", "example.com"),
    ("example．com", "example.com"),
    # A-labels given directly are kept (lowercased).
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
    # Wildcards keep '*.' in front of the A-label base.
    ("*.example.com", "*.example.com"),
    ("*.Example.COM.", "*.example.com"),
    ("*.bücher.example", "*.xn--bcher-kva.example"),
    ("*.a.b.example.com", "*.a.b.example.com"),
]


@pytest.mark.parametrize(("given", "expected"), NORMALIZED)
def test_normalize_name(given: str, expected: str) -> None:
    assert normalize_name(given) == expected


@pytest.mark.parametrize("expected", sorted({e for _, e in NORMALIZED}))
def test_normalize_name_is_idempotent(expected: str) -> None:
    assert normalize_name(expected) == expected


def test_label_of_exactly_63_characters_is_accepted() -> None:
    name = "a" * 63 + ".example.com"
    assert normalize_name(name) == name


def test_name_of_exactly_253_characters_is_accepted() -> None:
    # 3 x 63 + 61 + 3 dots = 253
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_name(name) == name
    assert normalize_name(name + ".") == name  # the trailing dot does not count


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("*.example.com", True),
        ("*.Example.com.", True),
        (" *.example.com", True),
        ("example.com", False),
        ("www.example.com", False),
        ("a.*.example.com", False),
    ],
)
def test_is_wildcard(name: str, expected: bool) -> None:
    assert is_wildcard(name) is expected


# -- refused names ---------------------------------------------------------------------------

REFUSED = [
    # empty
    ("", ["'' is empty", "example.com"]),
    ("   ", ["'   ' is empty"]),
    (".", ["'.' is not a DNS name"]),
    # IP literals
    ("1.2.3.4", ["'1.2.3.4' is an IP address", "DNS names only"]),
    ("1.2.3.4.", ["'1.2.3.4.' is an IP address"]),
    ("192.168.0.1", ["'192.168.0.1' is an IP address"]),
    ("::1", ["'::1' is an IP address"]),
    ("2001:db8::1", ["'2001:db8::1' is an IP address"]),
    ("[2001:db8::1]", ["'[2001:db8::1]' is an IP address"]),
    ("[::1]", ["'[::1]' is an IP address"]),
    ("fe80::1%eth0", ["'fe80::1%eth0' is an IP address"]),
    ("１.２.３.４", ["'１.２.３.４' is an IP address"]),
    # all-numeric last label (mistyped addresses)
    ("1.2.3", ["'1.2.3' ends in the all-numeric label '3'"]),
    ("256.1.1.1", ["'256.1.1.1' ends in the all-numeric label '1'"]),
    # URLs and ports
    ("https://example.com/", ["'https://example.com/' looks like a URL", "'example.com'"]),
    ("example.com/path", ["'example.com/path' looks like a URL"]),
    ("example.com:443", ["'example.com:443' includes a port", "'example.com'"]),
    # label structure
    ("localhost", ["'localhost' has only one label", "'localhost.example.com'"]),
    ("com.", ["'com.' has only one label"]),
    ("a..example.com", ["'a..example.com' has an empty label", "extra dot"]),
    (".example.com", ["'.example.com' has an empty label"]),
    ("example.com..", ["'example.com..' has an empty label"]),
    # characters
    ("_acme-challenge.example.com", ["label '_acme-challenge'", "underscore"]),
    ("foo_bar.example.com", ["label 'foo_bar' in 'foo_bar.example.com'", "underscore"]),
    ("a b.example.com", ["label 'a b'", "contains ' '", "letters, digits and hyphens"]),
    ("a@example.com", ["label 'a@example'", "contains '@'"]),
    ("exa\x00mple.com", ["contains '\\x00'"]),
    ("ex!ample.com", ["contains '!'"]),
    ("-a.example.com", ["label '-a' in '-a.example.com'", "hyphen"]),
    ("a-.example.com", ["label 'a-' in 'a-.example.com'", "hyphen"]),
    ("example.-com", ["label '-com'", "hyphen"]),
    ("ab--cd.example.com", ["label 'ab--cd'", "third and fourth positions"]),
    # IDNA
    ("xn--zz.example.com", ["label 'xn--zz'", "not a valid IDNA A-label"]),
    ("xn--.example.com", ["label 'xn--'", "hyphen"]),
    ("xn---bbk.example.com", ["label 'xn---bbk'", "not a valid IDNA A-label"]),
    ("ex\u200dample.com", ["label 'ex\\u200dample'", "not a valid internationalized label"]),
    ("a\u2028b.com", ["'a\\u2028b.com' contains a character that is not allowed"]),
    ("bü_cher.example", ["label 'bü_cher'", "underscore"]),
    # wildcards
    ("*", ["'*' is a wildcard over fewer than two labels", "'*.example.com'"]),
    ("*.", ["'*.' is a wildcard over fewer than two labels"]),
    ("*.com", ["'*.com' is a wildcard over fewer than two labels"]),
    ("a.*.com", ["'a.*.com' has a wildcard that is not the whole leftmost label"]),
    ("a.*.example.com", ["'a.*.example.com' has a wildcard that is not the whole leftmost"]),
    ("*a.example.com", ["'*a.example.com' has a wildcard that is not the whole leftmost"]),
    ("a*.example.com", ["'a*.example.com' has a wildcard that is not the whole leftmost"]),
    ("*.*.example.com", ["'*.*.example.com' has a wildcard that is not the whole leftmost"]),
    ("example.*", ["'example.*' has a wildcard that is not the whole leftmost"]),
    ("*..example.com", ["'*..example.com' has an empty label"]),
]


@pytest.mark.parametrize(("name", "fragments"), REFUSED)
def test_normalize_name_refuses(name: str, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        normalize_name(name)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_label_of_64_characters_is_refused() -> None:
    label = "x" * 64
    name = f"{label}.example.com"
    with pytest.raises(UsageError) as info:
        normalize_name(name)
    assert str(info.value) == (f"label {label!r} in {name!r} is 64 characters; the limit is 63")


def test_unicode_label_too_long_in_ascii_form_is_refused() -> None:
    label = "ü" * 60  # 60 characters, but 'xn--' + punycode is longer than 63
    with pytest.raises(UsageError) as info:
        normalize_name(f"{label}.example")
    message = str(info.value)
    assert f"label {label!r}" in message
    assert "in its ASCII form 'xn--" in message
    assert "the limit is 63" in message


def test_name_of_254_characters_is_refused() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62])
    assert len(name) == 254
    with pytest.raises(UsageError) as info:
        normalize_name(name)
    message = str(info.value)
    assert "is 254 characters long; the limit is 253" in message
    assert "\n" not in message
    assert len(message) < 200  # a long name is shortened in the message


def test_name_too_long_in_ascii_form_is_refused() -> None:
    # 4 short Unicode labels grow past 253 characters only once encoded.
    label = "ü" * 25 + "a" * 20  # 45 characters, 'xn--' form is longer
    name = ".".join([label] * 5)
    assert len(name) < 253
    with pytest.raises(UsageError) as info:
        normalize_name(name)
    assert "characters long in its ASCII form" in str(info.value)
    assert "the limit is 253" in str(info.value)


def test_huge_input_is_refused_without_idna_errors() -> None:
    with pytest.raises(UsageError, match="is 5000 characters long; the limit is 253"):
        normalize_name("ü" * 5000)


# -- lists of names --------------------------------------------------------------------------


def test_validate_names_normalizes_and_keeps_order() -> None:
    given = ["WWW.Example.com.", "bücher.example", "api.example.com", "example.com"]
    assert validate_names(given) == [
        "www.example.com",
        "xn--bcher-kva.example",
        "api.example.com",
        "example.com",
    ]


def test_validate_names_accepts_a_tuple() -> None:
    assert validate_names(("b.example.com", "a.example.com")) == [
        "b.example.com",
        "a.example.com",
    ]


def test_validate_names_refuses_none() -> None:
    with pytest.raises(UsageError, match="no names given; give at least one DNS name"):
        validate_names([])


def test_validate_names_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError):
        validate_names("example.com")


def test_exactly_max_names_is_accepted() -> None:
    names = [f"host{i}.example.com" for i in range(MAX_NAMES)]
    assert MAX_NAMES == 100
    assert validate_names(names) == names


def test_one_more_than_max_names_is_refused() -> None:
    names = [f"host{i}.example.com" for i in range(MAX_NAMES + 1)]
    with pytest.raises(UsageError) as info:
        validate_names(names)
    message = str(info.value)
    assert "101 names given" in message
    assert "at most 100" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Example.com", "example.com."),
        ("example.com", "EXAMPLE.COM"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "bücher.example"),
        ("*.example.com", "*.Example.com."),
        (" example.com", "example.com"),
    ],
)
def test_duplicates_after_normalization_are_refused(first: str, second: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_names([first, "other.example.com", second], challenge="dns-01")
    assert str(info.value) == f"{first!r} and {second!r} are the same name; give it once"


def test_exact_duplicate_is_refused() -> None:
    with pytest.raises(UsageError) as info:
        validate_names(["example.com", "example.com"])
    assert str(info.value) == "'example.com' is given twice; give it once"


def test_wildcard_and_its_base_are_different_names() -> None:
    assert validate_names(["example.com", "*.example.com"], challenge="dns-01") == [
        "example.com",
        "*.example.com",
    ]


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_wildcard_refused_without_dns_validation(challenge: str) -> None:
    with pytest.raises(UsageError) as info:
        validate_names(["example.com", "*.Example.com"], challenge=challenge)
    message = str(info.value)
    assert message.startswith("'*.Example.com' is a wildcard")
    assert "wildcard certificates need DNS validation" in message
    assert "use --challenge dns-01" in message


def test_wildcard_refused_with_default_challenge() -> None:
    with pytest.raises(UsageError, match="use --challenge dns-01"):
        validate_names(["*.example.com"])


def test_wildcard_accepted_with_dns_01() -> None:
    assert validate_names(["*.Example.com", "example.com"], challenge="dns-01") == [
        "*.example.com",
        "example.com",
    ]


def test_validate_names_reports_the_bad_name() -> None:
    with pytest.raises(UsageError, match=r"^'a\.\.example\.com' has an empty label"):
        validate_names(["example.com", "a..example.com"])
