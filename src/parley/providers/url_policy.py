"""Which upstream base URLs and addresses parley may talk to (SSRF guard).

Three checks, one policy:
- `check_base_url` at configuration time: scheme, parser-confusing characters, userinfo, query
  and fragment, the host, and plain http in production unless the host is allow-listed.
- `host_refusals`, the host part of that check, also applied at connect time by the HTTP seam:
  aiohttp connects to a host written as an address without asking the resolver, and maps a host
  that is not ASCII before it decides whether it is one.
- `address_refusal` at connect time, applied by the provider's resolver to every address a host
  name resolves to, so a name that points at link-local or metadata space is refused too and the
  connection is pinned to the address that was checked (no DNS rebinding window).

A host is read the way the WHATWG URL standard reads it: one that ends in a number is an IPv4
address in any numeric spelling (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`; C's `inet_aton`
and so `getaddrinfo` read them alike), or no valid host at all. Only the canonical dotted-decimal
spelling is accepted, so whoever reads the configuration sees the address parley connects to.

Link-local and cloud-metadata addresses are refused always, allow-list or not. An IPv6 address
that carries an IPv4 one (v4-mapped, NAT64) is judged as the IPv4 address it reaches.

Imports: the standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import SplitResult, urlsplit

# Cloud metadata endpoints that are not (all) inside link-local space.
_METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local, AWS/GCP/Azure/OpenStack metadata at .169.254
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::/64",  # AWS IMDS over IPv6
        "168.63.129.16/32",  # Azure wire server (globally routable)
        "100.100.100.200/32",  # Alibaba Cloud metadata
    )
)
_METADATA_HOSTNAMES = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
_FORBIDDEN_CHARS = frozenset("\\\t\r\n @")


def address_refusal(address: str) -> str | None:
    """Why `address` may not be contacted, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        ip = _carried_ipv4(ip) or ip
    for net in _METADATA_NETWORKS:
        if ip.version == net.version and ip in net:
            return f"{ip} is a link-local or cloud-metadata address"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    return None


# IPv6 prefixes whose last 32 bits are an IPv4 address the packets go to (RFC 4291, 6052, 6145).
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # a dual-stack socket connects over IPv4
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # stateless IP/ICMP translation
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # a NAT64 gateway connects over IPv4
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated; :: and ::1 live here too


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to `ip` reaches, when `ip` embeds one."""
    if any(ip in net for net in (_IPV4_MAPPED, _IPV4_TRANSLATED, _NAT64_WELL_KNOWN)) or (
        ip in _IPV4_COMPATIBLE and int(ip) > 1
    ):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_base_url(url: str, *, production: bool, allowed_hosts: Collection[str]) -> list[str]:
    """Every reason `url` is not an acceptable upstream base URL (empty when it is)."""
    if not url.strip():
        return ["must not be empty"]
    if any(ch in _FORBIDDEN_CHARS for ch in url) or any(ord(ch) < 32 for ch in url):
        return ["must not contain spaces, backslashes, control characters or user credentials"]
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed or misused "[" around the host
        return [f"is not a valid URL ({exc})"]
    if parts.scheme not in ("http", "https"):
        return [f"must use http or https, not {parts.scheme or 'no scheme'!r}"]
    host = (parts.hostname or "").lower()
    if not host:
        return ["has no host"]
    try:
        parts.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return ["has an invalid port"]
    problems: list[str] = []
    # The providers append the endpoint path (`/chat/completions`) to the base URL; after a "?"
    # or "#" it would land in the query or the fragment and the request would go to another path.
    # Checked on the text: `urlsplit` drops an empty query or fragment, the append does not.
    before_fragment, hash_sign, _ = url.partition("#")
    if "?" in before_fragment:
        problems.append("must not carry a query string ('?...'): the endpoint path is appended to the base URL")
    if hash_sign:
        problems.append("must not carry a fragment ('#...'): the endpoint path is appended to the base URL")
    if host in _METADATA_HOSTNAMES:
        problems.append(f"host {host!r} is a cloud-metadata endpoint")
    problems += host_refusals(host)
    if production and parts.scheme == "http" and not _host_allowed(parts, allowed_hosts):
        problems.append(
            f"plain http to {host!r} is refused in production; use https or add the host to MCP_LLM_ALLOWED_HOSTS"
        )
    return problems


def host_refusals(host: str) -> list[str]:
    """Every reason the URL host `host` is refused before any resolver sees it (empty for a name).

    A host must be ASCII; one written as an address must be allowed and, for IPv4, canonical.
    `host` is as `urlsplit(...).hostname` gives it: lowercase, an IPv6 address without brackets.
    """
    if not host.isascii():
        # aiohttp maps such a host to ASCII after this check (fullwidth digits and ideographic
        # full stops make `169.254.169.254`) and connects to the literal without asking the
        # resolver; refusing is safer than predicting its mapping.
        return [f"host {host!r} is not ASCII; write an international domain name in its xn-- form"]
    if ":" in host:
        refusal = address_refusal(host)
        return [refusal] if refusal else []
    address = parse_ipv4_host(host)
    if address is None:
        if _ends_in_a_number(host):
            return [f"host {host!r} ends in a number but is not an IPv4 address"]
        return []
    canonical = str(address)
    refusal = address_refusal(canonical)
    if host == canonical:
        return [refusal] if refusal else []
    if refusal:
        return [f"{refusal} (host {host!r} is a numeric form of {canonical})"]
    return [f"host {host!r} is a numeric form of {canonical}; write it as {canonical}"]


def parse_ipv4_host(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `host` spells, per the WHATWG URL standard's IPv4 parser; None if none.

    One to four numbers separated by dots, each decimal, hex (`0x`) or octal (leading `0`); each
    but the last is one byte and the last fills the bytes left (`127.1`, `169.254.43518`,
    `2852039166`); one trailing dot is dropped. A number too large for its place (`256.0.0.1`,
    `4294967296`) leaves no address.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _ipv4_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


# Spelled out: `int()` would also take signs, underscores, spaces and non-ASCII digits.
_DIGITS_OF_RADIX = {
    8: frozenset("01234567"),
    10: frozenset("0123456789"),
    16: frozenset("0123456789abcdefABCDEF"),
}


def _ipv4_number(part: str) -> int | None:
    """One dot-separated part of a numeric IPv4 host (the standard's IPv4 number parser)."""
    if not part:
        return None
    radix = 10
    if len(part) >= 2 and part[0] == "0" and part[1] in "xX":
        part, radix = part[2:], 16
    elif len(part) >= 2 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0  # a bare "0x" is zero
    if not set(part) <= _DIGITS_OF_RADIX[radix]:
        return None
    return int(part, radix)


def _ends_in_a_number(host: str) -> bool:
    """Whether the URL standard reads `host` as an IPv4 address (and rejects it if it is none)."""
    parts = host.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and set(last) <= _DIGITS_OF_RADIX[10]:
        return True
    return _ipv4_number(last) is not None


def _host_allowed(parts: SplitResult, allowed_hosts: Collection[str]) -> bool:
    host = (parts.hostname or "").lower()
    allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
    return host in allowed or f"{host}:{parts.port}" in allowed
