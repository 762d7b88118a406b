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


def _check_path(name, what, limit):
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
    for comp in name.split("/"):
        if comp == "":
            raise InvalidContainer(f"{what} {name!r} has an empty path component "
                                   "(double or trailing '/')")
        if comp in (".", ".."):
            raise InvalidContainer(f"{what} {name!r} must not contain a {comp!r} component")
        if len(comp) > MAX_COMPONENT:
            raise InvalidContainer(f"{what} {name!r} has a component longer than "
                                   f"{MAX_COMPONENT} characters")
    return name


def validate_container(name):
    """Return ``name`` if it is a valid container, else raise InvalidContainer."""
    return _check_path(name, "container", MAX_CONTAINER)


def validate_object_name(name):
    """Return ``name`` if it is a valid object name, else raise InvalidContainer."""
    return _check_path(name, "object name", MAX_NAME)


def validate_identifier(value, what):
    """IDs used inside object names (backup id): one component, safe characters."""
    if not isinstance(value, str) or not value:
        raise InvalidContainer(f"{what} must be a non-empty string")
    if len(value) > 128 or not _ID_ALLOWED.match(value) or value in (".", ".."):
        raise InvalidContainer(f"{what} {value!r} must be 1-128 characters of [A-Za-z0-9._-]")
    return value


def validate_prefix_arg(prefix):
    """A list() prefix: like an object name but may be empty or end with '/'."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if body == "":
        raise InvalidContainer("list prefix must not be just '/'")
    validate_object_name(body)
    return prefix
