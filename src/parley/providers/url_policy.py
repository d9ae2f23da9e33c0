"""Which upstream base URLs and addresses parley may talk to (SSRF guard).

Two checks, one policy:
- `check_base_url` at configuration time: scheme, parser-confusing characters, userinfo, query
  and fragment, literal addresses, and plain http in production unless the host is allow-listed.
- `address_refusal` at connect time, applied by the provider's resolver to every address a host
  name resolves to, so a name that points at link-local or metadata space is refused too and the
  connection is pinned to the address that was checked (no DNS rebinding window).

Link-local and cloud-metadata addresses are refused always, allow-list or not.
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
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net in _METADATA_NETWORKS:
        if ip.version == net.version and ip in net:
            return f"{ip} is a link-local or cloud-metadata address"
    if ip.is_multicast or ip.is_unspecified:
        return f"{ip} is not a unicast address"
    return None


def check_base_url(url: str, *, production: bool, allowed_hosts: Collection[str]) -> list[str]:
    """Every reason `url` is not an acceptable upstream base URL (empty when it is)."""
    if not url.strip():
        return ["must not be empty"]
    if any(ch in _FORBIDDEN_CHARS for ch in url) or any(ord(ch) < 32 for ch in url):
        return ["must not contain spaces, backslashes, control characters or user credentials"]
    parts = urlsplit(url)
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
    elif _is_ip_literal(host):
        refusal = address_refusal(host)
        if refusal:
            problems.append(refusal)
    if production and parts.scheme == "http" and not _host_allowed(parts, allowed_hosts):
        problems.append(
            f"plain http to {host!r} is refused in production; use https or add the host to MCP_LLM_ALLOWED_HOSTS"
        )
    return problems


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_allowed(parts: SplitResult, allowed_hosts: Collection[str]) -> bool:
    host = (parts.hostname or "").lower()
    allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}
    return host in allowed or f"{host}:{parts.port}" in allowed
