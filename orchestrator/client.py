"""A small client of the public HTTP API (the Cinder v3 backup calls), for the CLI.

Credentials are taken as the cinder CLI takes them: an API token (``--os-token`` /
``OS_TOKEN``) for ``ORCH_AUTH=token``, else the noauth user and project
(``OS_USER_ID`` / ``OS_PROJECT_ID``, as with ``OS_AUTH_TYPE=noauth``), sent as
``X-Auth-Token: <user>:<project>``. The endpoint is ``--os-endpoint`` /
``OS_ENDPOINT`` (or cinder's ``CINDER_ENDPOINT``), else the local API of the
settings. Nothing here reads the database: everything goes over HTTP.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

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
    """Neither a token nor a noauth user and project were given."""


class ApiError(ClientError):
    """The API answered with an error (a Cinder fault)."""

    def __init__(self, status: int, message: str, request_id: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.request_id = status, message, request_id

    def as_dict(self) -> dict:
        return {"code": self.status, "message": self.message, "request_id": self.request_id}


@dataclass(frozen=True)
class Credentials:
    """What the client sends as X-Auth-Token, and how it was chosen (never printed)."""

    header: str
    mode: str  # "token" | "noauth"


def resolve_credentials(env: Mapping[str, str], *, token: str | None = None,
                        user_id: str | None = None, project_id: str | None = None,
                        auth_type: str | None = None) -> Credentials:
    """Options first, then the OS_* variables the cinder CLI reads.

    :raises CredentialsMissing: naming what to set.
    """
    auth_type = (auth_type or env.get("OS_AUTH_TYPE") or "").strip().lower()
    token = token or env.get("OS_TOKEN") or env.get("OS_AUTH_TOKEN")
    user_id = user_id or env.get("OS_USER_ID")
    project_id = project_id or env.get("OS_PROJECT_ID") or env.get("OS_TENANT_ID")
    if token and auth_type != "noauth":
        return Credentials(token.strip(), "token")
    if user_id or project_id:
        user = (user_id or project_id).strip()
        project = (project_id or user_id).strip()
        return Credentials(f"{user}:{project}", "noauth")
    raise CredentialsMissing(
        "no credentials: give an API token (--os-token or OS_TOKEN, for ORCH_AUTH=token) "
        "or, for ORCH_AUTH=noauth, OS_AUTH_TYPE=noauth with OS_USER_ID and OS_PROJECT_ID")


def default_endpoint(env: Mapping[str, str], settings=None) -> str:
    """``OS_ENDPOINT``, ``CINDER_ENDPOINT``, else the API these settings serve."""
    for name in ("OS_ENDPOINT", "CINDER_ENDPOINT"):
        if env.get(name):
            return env[name]
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
                 verify: bool | str = True, version: str = MICROVERSION):
        self.endpoint = endpoint.rstrip("/")
        if not re.search(r"/v3(/[^/]+)?$", self.endpoint):
            self.endpoint += "/v3"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.verify = verify
        self.session.headers.update({
            "X-Auth-Token": credentials.header, "Accept": "application/json",
            "OpenStack-API-Version": f"volume {version}",
            "User-Agent": f"orchestrator-cli/{__version__}"})

    def _call(self, method: str, path: str, *, json: dict | None = None,
              params: dict | None = None, ok: tuple[int, ...] = (200, 202)) -> dict | None:
        try:
            r = self.session.request(method, self.endpoint + path, json=json, params=params,
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
