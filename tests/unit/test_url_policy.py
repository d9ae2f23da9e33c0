"""The SSRF policy for upstream base URLs and the addresses they resolve to."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.providers.url_policy import address_refusal, check_base_url, parse_ipv4_host


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "169.254.0.1",  # any link-local
        "fe80::1",
        "fe80::1%eth0",  # scoped link-local
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "::ffff:169.254.169.254",  # v4-mapped metadata
        "::ffff:a9fe:a9fe",
        "::ffff:0:169.254.169.254",  # v4-translated
        "64:ff9b::169.254.169.254",  # through a NAT64 gateway
        "64:ff9b::a9fe:a9fe",
        "::169.254.169.254",  # v4-compatible (deprecated)
        "64:ff9b::e000:1",  # 224.0.0.1 through NAT64
        "168.63.129.16",  # Azure wire server
        "100.100.100.200",  # Alibaba metadata
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "not-an-ip",
    ],
)
def test_refused_addresses(address: str) -> None:
    assert address_refusal(address) is not None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.5",
        "192.168.1.20",
        "8.8.8.8",
        "2606:4700::1",
        "::ffff:127.0.0.1",  # an embedded IPv4 address is judged as that address
        "64:ff9b::10.0.0.5",
    ],
)
def test_allowed_addresses(address: str) -> None:
    # Loopback and private space are allowed: local model servers live there.
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://localhost:11434/v1",
        "https://api.example.com/v1",
        "http://[::1]:8080/v1",
        "http://10.1.2.3/v1",
        # Names with digits in them are names: only a last label that is a number makes an address.
        "http://1password.example/v1",
        "http://llm-0x7f.internal/v1",
        "http://v1.0x7g/v1",
        "http://xn--bcher-kva.example/v1",  # an international name in its ASCII form
    ],
)
def test_good_urls_in_development(url: str) -> None:
    assert check_base_url(url, production=False, allowed_hosts=()) == []


def test_https_is_fine_in_production() -> None:
    assert check_base_url("https://api.example.com/v1", production=True, allowed_hosts=()) == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://[64:ff9b::a9fe:a9fe]/v1", "link-local"),
        ("http://[::ffff:0:a9fe:a9fe]/v1", "link-local"),
        ("http://metadata.google.internal/computeMetadata/v1", "metadata"),
        ("http://METADATA.google.internal/", "metadata"),
        ("http://127.0.0.1\\@1.1.1.1/v1", "backslashes"),
        ("http://user:pass@example.com/v1", "credentials"),
        ("http://example.com/v1\r\nX-Injected: 1", "control"),
        ("file:///etc/passwd", "http or https"),
        ("gopher://example.com/", "http or https"),
        ("ftp://example.com/", "http or https"),
        ("//example.com/v1", "no scheme"),
        ("http:///v1", "no host"),
        ("http://example.com:99999/v1", "invalid port"),
        ("http://[169.254.169.254]/v1", "not a valid URL"),
        ("http://[::1/v1", "not a valid URL"),
        ("", "empty"),
    ],
)
def test_refused_urls(url: str, fragment: str) -> None:
    problems = check_base_url(url, production=False, allowed_hosts=())
    assert problems
    assert fragment in " ".join(problems)


def test_plain_http_is_refused_in_production_unless_allow_listed() -> None:
    url = "http://llm.internal:8000/v1"
    assert "production" in " ".join(check_base_url(url, production=True, allowed_hosts=()))
    assert check_base_url(url, production=True, allowed_hosts=["llm.internal"]) == []
    assert check_base_url(url, production=True, allowed_hosts=[" LLM.internal:8000 "]) == []
    assert check_base_url(url, production=True, allowed_hosts=["llm.internal:9000"]) != []


def test_allow_list_never_admits_metadata() -> None:
    url = "http://169.254.169.254/v1"
    assert check_base_url(url, production=True, allowed_hosts=["169.254.169.254"]) != []


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("http://127.0.0.1:8000/v1?api-version=2024", ["query string"]),
        ("http://127.0.0.1:8000/v1?", ["query string"]),
        ("http://127.0.0.1:8000/v1#models", ["fragment"]),
        ("http://127.0.0.1:8000/v1#", ["fragment"]),
        ("http://127.0.0.1:8000/v1?a=1#b", ["query string", "fragment"]),
        ("http://127.0.0.1:8000/v1#b?a=1", ["fragment"]),
    ],
)
def test_query_and_fragment_are_refused_one_problem_each(url: str, fragments: list[str]) -> None:
    # Parley appends the endpoint path to the base URL: after a "?" or "#" it would land in the
    # query or the fragment, never in the path.
    problems = check_base_url(url, production=False, allowed_hosts=())
    assert len(problems) == len(fragments)
    for problem, fragment in zip(problems, fragments, strict=True):
        assert fragment in problem


# --- numeric IPv4 hosts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2852039166", "169.254.169.254"),  # one decimal number
        ("0xa9fea9fe", "169.254.169.254"),  # one hex number
        ("0XA9FEA9FE", "169.254.169.254"),
        ("025177524776", "169.254.169.254"),  # one octal number
        ("0251.0376.0251.0376", "169.254.169.254"),  # four octal parts
        ("169.254.43518", "169.254.169.254"),  # the last part fills two bytes
        ("0xa9.0xfe.0xa9fe", "169.254.169.254"),
        ("169.16689662", "169.254.169.254"),  # the last part fills three bytes
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x00000000007f.1", "127.0.0.1"),  # leading zeros after 0x are still hex
        ("127.0.0.1.", "127.0.0.1"),  # one trailing dot is dropped
        ("127.0.0.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("00", "0.0.0.0"),
        ("0x", "0.0.0.0"),  # 0x with no digits is zero in the URL standard
        ("4294967295", "255.255.255.255"),
        ("255.16777215", "255.255.255.255"),
    ],
)
def test_numeric_ipv4_spellings_parse_to_their_address(host: str, address: str) -> None:
    assert parse_ipv4_host(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    "host",
    [
        "4294967296",  # 2**32: too large, so a name to a resolver, not an address
        "0x100000000",
        "040000000000",
        "256.0.0.1",  # only the last part may exceed a byte
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "1.2.3.4.5",  # five parts
        "1.2.3.4..",
        "1..1",  # an empty part
        "08.0.0.1",  # 8 is no octal digit
        "0x7g.1",
        "1_0.0.0.1",  # int() would take the underscore
        "+1.0.0.1",
        " 1.0.0.1",
        "\uff11\uff12\uff17.0.0.1",  # fullwidth digits are not ASCII digits
        "",
        ".",
        "localhost",
        "example.com",
        "::1",
    ],
)
def test_hosts_that_spell_no_ipv4_address(host: str) -> None:
    assert parse_ipv4_host(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://2852039166/v1",
        "http://0xa9fea9fe/v1",
        "http://0251.0376.0251.0376/v1",
        "http://169.254.43518/v1",
        "http://0xa9.0xfe.0xa9fe/v1",
        "http://169.254.169.254./v1",
        "http://0XA9FEA9FE:80/latest/meta-data",
    ],
)
def test_numeric_forms_of_the_metadata_address_are_refused(url: str) -> None:
    (problem,) = check_base_url(url, production=False, allowed_hosts=())
    assert "169.254.169.254 is a link-local or cloud-metadata address" in problem
    assert "numeric form" in problem


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://2130706433:8080/v1", "2130706433"),
        ("http://0x7f.1:8080/v1", "0x7f.1"),
        ("http://127.1:8080/v1", "127.1"),
        ("http://0177.0.0.1:8080/v1", "0177.0.0.1"),
        ("http://127.0.0.1.:8080/v1", "127.0.0.1."),
        ("http://0x7F000001:8080/v1", "0x7f000001"),
    ],
)
def test_non_canonical_numeric_hosts_are_refused_naming_the_address(url: str, host: str) -> None:
    # A reader of the configuration should see the address parley connects to.
    assert check_base_url(url, production=False, allowed_hosts=()) == [
        f"host {host!r} is a numeric form of 127.0.0.1; write it as 127.0.0.1"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://4294967296/v1",
        "http://0x100000000/v1",
        "http://1.2.3.4.5/v1",
        "http://256.0.0.1/v1",
        "http://08.0.0.1/v1",
        "http://llm.internal.8/v1",
        "http://llm.0x1/v1",
    ],
)
def test_hosts_ending_in_a_number_that_spell_no_address_are_refused(url: str) -> None:
    # The URL standard makes these invalid URLs, and aiohttp refuses an all-digit host that is no
    # canonical address: refused at start-up rather than on every turn.
    (problem,) = check_base_url(url, production=False, allowed_hosts=())
    assert "ends in a number but is not an IPv4 address" in problem


def _spell_ipv4_number(value: int, radix: int) -> str:
    if radix == 16:
        return f"0x{value:x}"
    if radix == 8:
        return f"0{value:o}"
    return str(value)


@settings(max_examples=500, deadline=None)
@given(
    address=st.integers(min_value=0, max_value=2**32 - 1),
    part_count=st.integers(min_value=1, max_value=4),
    radixes=st.lists(st.sampled_from([8, 10, 16]), min_size=4, max_size=4),
    upper=st.booleans(),
)
def test_every_numeric_spelling_parses_back_to_its_address(
    address: int, part_count: int, radixes: list[int], upper: bool
) -> None:
    # The leading parts are one byte each; the last part holds the remaining bytes.
    last_bytes = 5 - part_count
    leading = [(address >> (8 * (3 - index))) & 0xFF for index in range(part_count - 1)]
    numbers = [*leading, address & ((1 << (8 * last_bytes)) - 1)]
    host = ".".join(_spell_ipv4_number(n, r) for n, r in zip(numbers, radixes, strict=False))
    if upper:
        host = host.upper()
    expected = ipaddress.IPv4Address(address)
    assert parse_ipv4_host(host) == expected
    assert parse_ipv4_host(host + ".") == expected
    # The C library reads the same spelling as the same address: a resolver given this host
    # connects where the policy looked.
    assert socket.inet_aton(host) == expected.packed
    problems = check_base_url(f"http://{host}:8080/v1", production=False, allowed_hosts=())
    if host == str(expected):
        assert problems == ([r] if (r := address_refusal(host)) else [])
    else:
        assert len(problems) == 1
        assert f"numeric form of {expected}" in problems[0]


@pytest.mark.parametrize(
    "url",
    [
        "http://\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14/v1",  # fullwidth digits
        "http://169\u3002254\u3002169\u3002254/v1",  # ideographic full stops
        "http://\U0001d7cf\U0001d7d0\U0001d7d5.0.0.1:8080/v1",  # mathematical bold digits
        "http://metadata\uff0egoogle\uff0einternal/v1",
        "http://b\u00fccher.example/v1",
    ],
)
def test_hosts_that_are_not_ascii_are_refused(url: str) -> None:
    # The HTTP client maps such a host to ASCII after this check has looked (the first three
    # become IPv4 addresses it connects to without asking the resolver), so the check refuses
    # them instead of predicting the mapping.
    (problem,) = check_base_url(url, production=False, allowed_hosts=())
    assert "is not ASCII" in problem
    assert "xn--" in problem
