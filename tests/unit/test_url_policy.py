"""The SSRF policy for upstream base URLs and the addresses they resolve to."""

from __future__ import annotations

import pytest

from parley.providers.url_policy import address_refusal, check_base_url


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "169.254.0.1",  # any link-local
        "fe80::1",
        "fe80::1%eth0",  # scoped link-local
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "::ffff:169.254.169.254",  # v4-mapped metadata
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


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.0.0.5", "192.168.1.20", "8.8.8.8", "2606:4700::1"])
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
