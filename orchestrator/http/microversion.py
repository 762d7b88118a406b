"""OpenStack-API-Version negotiation: no header means 3.0, `latest` the maximum."""
from __future__ import annotations

import re

from orchestrator import errors

MIN_VERSION = (3, 0)
MAX_VERSION = (3, 71)
_VERSION = re.compile(r"([1-9]\d*)\.(0|[1-9]\d*)")


class APIVersion(tuple):
    def __new__(cls, major: int, minor: int):
        return super().__new__(cls, (major, minor))

    def __str__(self) -> str:
        return f"{self[0]}.{self[1]}"

    def matches(self, minimum: str) -> bool:
        major, minor = (int(x) for x in minimum.split("."))
        return tuple(self) >= (major, minor)


def negotiate(header: str | None) -> APIVersion:
    """The version a request asks for.

    :raises InvalidInput: malformed (400). :raises NotAcceptable: out of range (406).
    """
    if header is None or not header.strip():
        return APIVersion(*MIN_VERSION)
    value = None
    for item in header.split(","):
        parts = item.strip().split()
        if parts and parts[0].lower() == "volume":
            if len(parts) != 2:
                raise errors.InvalidInput(f"Invalid API version request: {item.strip()!r}")
            value = parts[1]
            break
    if value is None:
        raise errors.InvalidInput("OpenStack-API-Version header does not name the volume "
                                  "service.")
    if value.lower() == "latest":
        return APIVersion(*MAX_VERSION)
    m = _VERSION.fullmatch(value)
    if not m:
        raise errors.InvalidInput(f"Version {value} is not a valid API version (expected "
                                  "MAJOR.MINOR).")
    version = APIVersion(int(m.group(1)), int(m.group(2)))
    if not (MIN_VERSION <= tuple(version) <= MAX_VERSION):
        raise errors.NotAcceptable(f"Version {version} is not supported by the API. Minimum is "
                                   f"{APIVersion(*MIN_VERSION)} and maximum is "
                                   f"{APIVersion(*MAX_VERSION)}.")
    return version
