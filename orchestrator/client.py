"""A small client of the public HTTP API (the Cinder v3 backup calls), for the CLI.

Credentials are taken as the openstack and cinder CLIs take them (options first, then
the ``OS_*`` variables; docs/clients.md has the rules):

* Keystone password auth (``OS_AUTH_URL``, ``OS_USERNAME`` or ``OS_USER_ID``,
  ``OS_PASSWORD``, the project and domains): keystoneauth gets a token and finds the
  API in the catalog (``volumev3`` / ``block-storage``, ``OS_REGION_NAME``,
  ``OS_INTERFACE``) unless an endpoint is given; ``OS_TOKEN`` with ``OS_AUTH_URL``
  re-scopes a Keystone token the same way.
* a token sent as it is (``OS_TOKEN`` with an endpoint, or no ``OS_AUTH_URL``): an API
  token of ``ORCH_AUTH=token``.
* noauth: the user and project (``OS_USER_ID`` / ``OS_PROJECT_ID``) sent as
  ``X-Auth-Token: <user>:<project>``.

The endpoint is ``--os-endpoint`` / ``OS_ENDPOINT`` (or cinder's ``CINDER_ENDPOINT``),
else the catalog's (Keystone modes), else the local API of the settings. Nothing here
reads the database: everything goes over HTTP. Passwords and tokens are never part of
a message or a repr.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field

import requests

from orchestrator import __version__

MICROVERSION = "3.71"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                   r"[0-9a-fA-F]{12}")


class ClientError(Exception):
    """Anything that kept a call from getting its answer."""


class Unreachable(ClientError):
    """No HTTP answer at all (connection refused, TLS failure, timeout)."""


class CredentialsMissing(ClientError):
    """The credentials given are incomplete (or none were given): says what to set."""


class AuthFailed(ClientError):
    """Keystone refused the credentials (or answered the authentication with an error)."""


class NoEndpoint(ClientError):
    """Keystone's catalog has no endpoint of the API for this region and interface."""


class ApiError(ClientError):
    """The API answered with an error (a Cinder fault)."""

    def __init__(self, status: int, message: str, request_id: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.request_id = status, message, request_id

    def as_dict(self) -> dict:
        return {"code": self.status, "message": self.message, "request_id": self.request_id}


# OS_AUTH_TYPE values, as keystoneauth names its plugins
PASSWORD_TYPES = ("password", "v3password")
KEYSTONE_TOKEN_TYPES = ("token", "v3token")
RAW_TOKEN_TYPES = ("admin_token", "token_endpoint", "v3tokenendpoint")
NOAUTH_TYPES = ("noauth", "none")


@dataclass(frozen=True)
class KeystoneAuth:
    """What to authenticate to Keystone with (password or token: never in the repr)."""

    auth_url: str
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    user_id: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_id: str | None = None
    project_name: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    region_name: str | None = None
    interface: str = "public"

    @property
    def who(self) -> str:
        """The user and project, for messages (no secret)."""
        user = self.username or self.user_id or "the token's user"
        return f"{user} (project {self.project_name or self.project_id})"


@dataclass(frozen=True)
class Credentials:
    """How the client authenticates, and how it was chosen (secrets never in the repr).

    ``header`` is the X-Auth-Token of the token and noauth modes; in keystone mode
    ``keystone`` says what to get the token with (see :func:`connect`).
    """

    mode: str  # "keystone" | "token" | "noauth"
    header: str | None = field(default=None, repr=False)
    keystone: KeystoneAuth | None = None


def _first(option: str | None, env: Mapping[str, str], *names: str) -> str | None:
    """The option if given, else the first of these variables that is set (stripped)."""
    if option is not None and option.strip():
        return option.strip()
    for name in names:
        if (env.get(name) or "").strip():
            return env[name].strip()
    return None


def explicit_endpoint(env: Mapping[str, str], endpoint: str | None = None) -> str | None:
    """``--os-endpoint``, else ``OS_ENDPOINT``, else ``CINDER_ENDPOINT`` (None: none)."""
    return _first(endpoint, env, "OS_ENDPOINT", "CINDER_ENDPOINT")


def resolve_credentials(env: Mapping[str, str], *, token: str | None = None,
                        user_id: str | None = None, project_id: str | None = None,
                        auth_type: str | None = None, endpoint: str | None = None,
                        auth_url: str | None = None, username: str | None = None,
                        password: str | None = None, project_name: str | None = None,
                        user_domain_name: str | None = None,
                        user_domain_id: str | None = None,
                        project_domain_name: str | None = None,
                        project_domain_id: str | None = None,
                        region_name: str | None = None,
                        interface: str | None = None) -> Credentials:
    """Options first, then the OS_* variables the openstack and cinder CLIs read.

    The mode: ``--os-auth-type`` / ``OS_AUTH_TYPE`` when given (noauth, password,
    token, admin_token); else a token with an endpoint (or without ``OS_AUTH_URL``) is
    sent as it is, a password means Keystone password auth, a token with
    ``OS_AUTH_URL`` Keystone token auth, and a user or project id alone noauth. When a
    password and a token are both given, the one given as an option wins, else the
    password (unless an endpoint is given too: then the token, as the openstack CLI
    does).

    :raises CredentialsMissing: naming what to set.
    """
    kind = (_first(auth_type, env, "OS_AUTH_TYPE") or "").lower()
    tok = _first(token, env, "OS_TOKEN", "OS_AUTH_TOKEN")
    pw = _first(password, env, "OS_PASSWORD")
    url = _first(auth_url, env, "OS_AUTH_URL")
    user = _first(username, env, "OS_USERNAME")
    uid = _first(user_id, env, "OS_USER_ID")
    pid = _first(project_id, env, "OS_PROJECT_ID", "OS_TENANT_ID")
    has_endpoint = explicit_endpoint(env, endpoint) is not None

    def keystone(method: str) -> Credentials:
        missing = []
        if not url:
            missing.append("OS_AUTH_URL")
        if method == "password":
            if not pw:
                missing.append("OS_PASSWORD")
            if not (user or uid):
                missing.append("OS_USERNAME (or OS_USER_ID)")
        elif not tok:
            missing.append("OS_TOKEN")
        pname = _first(project_name, env, "OS_PROJECT_NAME", "OS_TENANT_NAME")
        if not (pid or pname):
            missing.append("OS_PROJECT_NAME (or OS_PROJECT_ID)")
        if missing:
            raise CredentialsMissing(f"Keystone {method} auth needs {', '.join(missing)} "
                                     f"(or the matching --os-* options)")
        udid = _first(user_domain_id, env, "OS_USER_DOMAIN_ID")
        pdid = _first(project_domain_id, env, "OS_PROJECT_DOMAIN_ID")
        named_user = method == "password" and user and not uid
        return Credentials("keystone", keystone=KeystoneAuth(
            auth_url=url, password=pw if method == "password" else None,
            token=tok if method == "token" else None,
            username=user if method == "password" else None,
            user_id=uid if method == "password" else None,
            # a name needs its domain: Default unless one is given (as keystone-register)
            user_domain_id=udid if named_user else None,
            user_domain_name=(_first(user_domain_name, env, "OS_USER_DOMAIN_NAME")
                              or "Default") if named_user and not udid else None,
            project_id=pid, project_name=None if pid else pname,
            project_domain_id=None if pid else pdid,
            project_domain_name=None if pid or pdid else (
                _first(project_domain_name, env, "OS_PROJECT_DOMAIN_NAME") or "Default"),
            region_name=_first(region_name, env, "OS_REGION_NAME"),
            interface=(_first(interface, env, "OS_INTERFACE") or "public").lower()
            .removesuffix("url")))

    def raw() -> Credentials:
        if not tok:
            raise CredentialsMissing("auth type admin_token needs a token (--os-token or "
                                     "OS_TOKEN) and an endpoint (--os-endpoint or "
                                     "OS_ENDPOINT)")
        return Credentials("token", header=tok)

    def noauth() -> Credentials:
        if not (uid or pid):
            raise CredentialsMissing("noauth needs OS_USER_ID and OS_PROJECT_ID (or "
                                     "--os-user-id and --os-project-id)")
        return Credentials("noauth", header=f"{uid or pid}:{pid or uid}")

    if kind in NOAUTH_TYPES:
        return noauth()
    if kind in PASSWORD_TYPES:
        return keystone("password")
    if kind in KEYSTONE_TOKEN_TYPES:
        return keystone("token")
    if kind in RAW_TOKEN_TYPES:
        return raw()
    if kind:
        raise CredentialsMissing(f"auth type {kind!r} is not supported here: use password, "
                                 f"token, admin_token or noauth")
    if tok and pw:
        token_wins = (token is not None and password is None) or (
            (token is None) == (password is None) and has_endpoint)
        return (raw() if has_endpoint or not url else keystone("token")) if token_wins \
            else keystone("password")
    if pw:
        return keystone("password")
    if tok:
        return raw() if has_endpoint or not url else keystone("token")
    if url or user:
        # an openrc without its password: noauth would only be refused later
        return keystone("password")
    if uid or pid:
        return noauth()
    if _first(None, env, "OS_CLOUD"):
        raise CredentialsMissing("OS_CLOUD is set, but clouds.yaml is not read here: export "
                                 "the cloud's OS_* variables (its openrc) instead")
    raise CredentialsMissing(
        "no credentials: give Keystone password auth (OS_AUTH_URL, OS_USERNAME, "
        "OS_PASSWORD, OS_PROJECT_NAME), an API token (--os-token or OS_TOKEN, for "
        "ORCH_AUTH=token) or, for ORCH_AUTH=noauth, OS_AUTH_TYPE=noauth with OS_USER_ID "
        "and OS_PROJECT_ID")


# The catalog's service types of the API, as `orchestrator keystone-register` registers
# them (orchestrator/keystone.py): cinderclient's first, then openstacksdk's.
CATALOG_TYPES = ("volumev3", "block-storage")


def connect(credentials: Credentials, endpoint: str | None, *,
            verify: bool | str = True, settings=None,
            env: Mapping[str, str] | None = None) -> Client:
    """A Client for these credentials: in keystone mode authenticated (a token now, new
    ones when it is about to expire) and pointed at the catalog's endpoint unless
    ``endpoint`` is given; otherwise at ``endpoint`` or the settings' local API.

    :raises AuthFailed: Keystone refused. :raises Unreachable: no Keystone there.
    :raises NoEndpoint: the catalog has no endpoint of the API.
    """
    if credentials.keystone is None:
        return Client(endpoint or default_endpoint(env or {}, settings), credentials,
                      verify=verify)
    from orchestrator.keystone import user_session
    ks = credentials.keystone
    sess = user_session(ks.auth_url, password=ks.password, token=ks.token, verify=verify,
                        username=ks.username, user_id=ks.user_id,
                        user_domain_name=ks.user_domain_name,
                        user_domain_id=ks.user_domain_id, project_id=ks.project_id,
                        project_name=ks.project_name,
                        project_domain_name=ks.project_domain_name,
                        project_domain_id=ks.project_domain_id)

    def token() -> str:
        return _keystone_call(ks, sess.get_token)

    token()  # authenticate now: bad credentials end here, before any API call
    if not endpoint:
        catalog = _keystone_call(ks, lambda: sess.auth.get_access(sess).service_catalog)
        endpoint = catalog_endpoint(catalog.catalog, ks.interface, ks.region_name)
    if not endpoint:
        region = f"region {ks.region_name}" if ks.region_name else "any region"
        raise NoEndpoint(f"Keystone's catalog has no {' or '.join(CATALOG_TYPES)} "
                         f"endpoint ({ks.interface} interface, {region}) for {ks.who}: "
                         f"check OS_REGION_NAME and OS_INTERFACE, or give --os-endpoint")
    return Client(endpoint, credentials, verify=verify, token=token)


def catalog_endpoint(catalog: list[dict], interface: str, region: str | None) -> str | None:
    """The URL of the API in a v3 token's catalog: the first of CATALOG_TYPES with an
    endpoint of this interface (and region, when given). Only these exact types: their
    aliases (volumev2, volume) are other APIs."""
    for service_type in CATALOG_TYPES:
        for service in catalog or ():
            if service.get("type") != service_type:
                continue
            for e in service.get("endpoints", ()):
                if e.get("interface") == interface and e.get("url") and (
                        region is None or region in (e.get("region_id"), e.get("region"))):
                    return e["url"]
    return None


def _keystone_call(ks: KeystoneAuth, call: Callable):
    """``call()``, with keystoneauth's errors as this module's (messages without secrets)."""
    from keystoneauth1 import exceptions as ks_errors
    where = ks.auth_url
    try:
        return call()
    except ks_errors.Unauthorized:
        raise AuthFailed(f"Keystone refused the credentials of {ks.who} at {where} "
                         f"(HTTP 401): check the password, user, project and domains"
                         ) from None
    except ks_errors.SSLError:
        raise Unreachable(f"TLS error talking to Keystone at {where} (OS_CACERT, "
                          f"--insecure)") from None
    except (ks_errors.ConnectionError, ks_errors.DiscoveryFailure) as exc:
        raise Unreachable(f"cannot reach Keystone at {where}: {type(exc).__name__}") from None
    except ks_errors.HttpError as exc:
        raise AuthFailed(f"Keystone refused the authentication of {ks.who} at {where}: "
                         f"HTTP {exc.http_status} {exc.message}") from None
    except ks_errors.ClientException as exc:
        raise AuthFailed(f"Keystone authentication of {ks.who} failed: "
                         f"{type(exc).__name__}") from None


def default_endpoint(env: Mapping[str, str], settings=None) -> str:
    """``OS_ENDPOINT``, ``CINDER_ENDPOINT``, else the API these settings serve."""
    given = explicit_endpoint(env)
    if given:
        return given
    if settings is None:
        return "http://127.0.0.1:8776/v3"
    scheme = settings.api_scheme
    host = settings.api_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{settings.api_port}/v3"


def fault_message(response: requests.Response) -> str:
    """The message of a Cinder fault body (``{"itemNotFound": {"message": …}}``)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or response.reason or "no message"
    if isinstance(body, dict):
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
    return str(body)[:300]


class Client:
    """Calls of the Cinder v3 backup API, answers as dicts; errors as ApiError."""

    def __init__(self, endpoint: str, credentials: Credentials, *, timeout: float = 30.0,
                 verify: bool | str = True, version: str = MICROVERSION,
                 token: Callable[[], str] | None = None):
        self.endpoint = endpoint.rstrip("/")
        if not re.search(r"/v3(/[^/]+)?$", self.endpoint):
            self.endpoint += "/v3"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        # the X-Auth-Token of each call (a Keystone session renews its token itself)
        self._token = token or (lambda: credentials.header)
        self.session.headers.update({
            "Accept": "application/json",
            "OpenStack-API-Version": f"volume {version}",
            "User-Agent": f"orchestrator-cli/{__version__}"})

    def _call(self, method: str, path: str, *, json: dict | None = None,
              params: dict | None = None, ok: tuple[int, ...] = (200, 202)) -> dict | None:
        try:
            r = self.session.request(method, self.endpoint + path, json=json, params=params,
                                     headers={"X-Auth-Token": self._token()},
                                     timeout=self.timeout)
        except requests.exceptions.SSLError as exc:
            raise Unreachable(f"TLS error talking to {self.endpoint}: {exc}") from None
        except requests.exceptions.RequestException as exc:
            raise Unreachable(f"cannot reach the API at {self.endpoint}: "
                              f"{type(exc).__name__}") from None
        if r.status_code not in ok:
            raise ApiError(r.status_code, fault_message(r),
                           r.headers.get("x-openstack-request-id"))
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise ApiError(r.status_code, "the API answered with something that is not "
                           "JSON", r.headers.get("x-openstack-request-id")) from None

    # ----------------------------------------------------------------------------- backups

    def get_backup(self, backup_id: str) -> dict:
        return self._call("GET", f"/backups/{backup_id}")["backup"]

    def list_backups(self, *, all_projects: bool = False, **filters) -> list[dict]:
        """Every page of the detail list (following the next links' markers)."""
        params = {k: v for k, v in filters.items() if v is not None}
        if all_projects:
            params["all_tenants"] = "1"
        out: list[dict] = []
        while True:
            body = self._call("GET", "/backups/detail", params=params)
            page = body.get("backups", [])
            out.extend(page)
            nxt = [link for link in body.get("backups_links", []) if link.get("rel") == "next"]
            if not nxt or not page or params.get("limit"):
                return out
            params["marker"] = page[-1]["id"]

    def find_backup(self, name_or_id: str) -> dict:
        """A backup by id, else by its exact name (which must then be unique).

        :raises ApiError: 404 when none matches, 409 when the name is ambiguous.
        """
        if _UUID.fullmatch(name_or_id):
            try:
                return self.get_backup(name_or_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        matches = self.list_backups(name=name_or_id)
        matches = [b for b in matches if b.get("name") == name_or_id]
        if not matches:
            raise ApiError(404, f"No backup with a name or ID of '{name_or_id}' exists.")
        if len(matches) > 1:
            raise ApiError(409, f"More than one backup is named '{name_or_id}': use its ID "
                           f"({', '.join(b['id'] for b in matches)}).")
        return matches[0]

    def find_volume(self, name_or_id: str) -> dict:
        """A volume by id, else by exact name. :raises ApiError:"""
        if _UUID.fullmatch(name_or_id):
            try:
                return self._call("GET", f"/volumes/{name_or_id}")["volume"]
            except ApiError as exc:
                if exc.status != 404:
                    raise
        body = self._call("GET", "/volumes/detail", params={"name": name_or_id})
        matches = [v for v in body.get("volumes", []) if v.get("name") == name_or_id]
        if not matches:
            raise ApiError(404, f"No volume with a name or ID of '{name_or_id}' exists.")
        if len(matches) > 1:
            raise ApiError(409, f"More than one volume is named '{name_or_id}': use its ID.")
        return matches[0]

    def get_volume(self, volume_id: str) -> dict:
        return self._call("GET", f"/volumes/{volume_id}")["volume"]

    def create_backup(self, volume_id: str, **fields) -> dict:
        body = {"volume_id": volume_id, **{k: v for k, v in fields.items() if v is not None}}
        return self._call("POST", "/backups", json={"backup": body})["backup"]

    def restore_backup(self, backup_id: str, *, volume_id: str | None = None,
                       name: str | None = None) -> dict:
        body = {k: v for k, v in (("volume_id", volume_id), ("name", name)) if v is not None}
        return self._call("POST", f"/backups/{backup_id}/restore",
                          json={"restore": body})["restore"]

    def delete_backup(self, backup_id: str, *, force: bool = False) -> None:
        if force:
            self._call("POST", f"/backups/{backup_id}/action",
                       json={"os-force_delete": {}})
        else:
            self._call("DELETE", f"/backups/{backup_id}", ok=(202, 204))
