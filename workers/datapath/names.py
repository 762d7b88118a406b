"""Validation of container and object names.

Rules (the same for every store): relative, only ``[A-Za-z0-9._/-]``, no empty,
``.`` or ``..`` component, no leading ``/``; a container is at most 255
characters, a full object name at most 1024 and each of its components at
most 255 (the POSIX NAME_MAX).
"""
import re

from .errors import InvalidContainer

_ALLOWED = re.compile(r"[A-Za-z0-9._/-]+\Z")
_ID_ALLOWED = re.compile(r"[A-Za-z0-9._-]+\Z")

MAX_CONTAINER = 255
MAX_NAME = 1024
MAX_COMPONENT = 255
MAX_IDENTIFIER = 128


def _check_path(name: object, what: str, limit: int) -> str:
    """Return ``name`` if it is a valid ``/``-separated path of at most ``limit`` characters.

    :raise InvalidContainer: with a message naming the rule it breaks.
    """
    if not isinstance(name, str):
        raise InvalidContainer(f"{what} must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidContainer(f"{what} must not be empty")
    if len(name) > limit:
        raise InvalidContainer(f"{what} {name[:40]!r}... is {len(name)} characters long; "
                               f"the limit is {limit}")
    if name.startswith("/"):
        raise InvalidContainer(f"{what} {name!r} must be relative, not an absolute path")
    if not _ALLOWED.match(name):
        bad = sorted({c for c in name if not _ALLOWED.match(c)})
        raise InvalidContainer(f"{what} {name!r} contains characters outside "
                               f"[A-Za-z0-9._/-]: {''.join(bad)!r}")
    for component in name.split("/"):
        if component == "":
            raise InvalidContainer(f"{what} {name!r} has an empty path component "
                                   "(double or trailing '/')")
        if component in (".", ".."):
            raise InvalidContainer(f"{what} {name!r} must not contain a {component!r} component")
        if len(component) > MAX_COMPONENT:
            raise InvalidContainer(f"{what} {name!r} has a component longer than "
                                   f"{MAX_COMPONENT} characters")
    return name


def validate_container(name: object) -> str:
    """Return ``name`` if it is a valid container, else raise InvalidContainer."""
    return _check_path(name, "container", MAX_CONTAINER)


def validate_object_name(name: object) -> str:
    """Return ``name`` if it is a valid object name, else raise InvalidContainer."""
    return _check_path(name, "object name", MAX_NAME)


def validate_identifier(value: object, what: str) -> str:
    """Return an id used inside object names (a backup id): one component, safe characters.

    :raise InvalidContainer: if it is empty, too long or has other characters.
    """
    if not isinstance(value, str) or not value:
        raise InvalidContainer(f"{what} must be a non-empty string")
    if len(value) > MAX_IDENTIFIER or not _ID_ALLOWED.match(value) or value in (".", ".."):
        raise InvalidContainer(f"{what} {value!r} must be 1-128 characters of [A-Za-z0-9._-]")
    return value


def validate_prefix_arg(prefix: str) -> str:
    """Return a list() prefix: like an object name, but it may be empty or end with '/'."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body == "":
        raise InvalidContainer("list prefix must not be just '/'")
    validate_object_name(body)
    return prefix
