"""This service in a Keystone catalog, so catalog-driven clients find it.

``openstack volume backup ...`` (openstacksdk) looks for the ``block-storage``
service type and its aliases, python-cinderclient for ``volumev3``: both are
registered, each with an endpoint per interface, all with the same URL
(normally ``http://host:8776/v3/%(project_id)s``; Keystone fills in the
token's project). Registering again updates the URLs in place.
"""
from __future__ import annotations

from dataclasses import dataclass

SERVICES = (("block-storage", "cinder"), ("volumev3", "cinderv3"))
INTERFACES = ("public", "internal", "admin")


@dataclass(frozen=True)
class Registered:
    service_type: str
    service_id: str
    interface: str
    endpoint_id: str
    url: str
    created: bool


def password_session(auth_url: str, username: str, password: str, project_name: str,
                     user_domain_name: str = "Default", project_domain_name: str = "Default"):
    """A keystoneauth session authenticated with a password (project-scoped)."""
    return user_session(auth_url, password=password, username=username,
                        project_name=project_name, user_domain_name=user_domain_name,
                        project_domain_name=project_domain_name)


def v3_auth_url(auth_url: str) -> str:
    """The identity v3 URL: ``OS_AUTH_URL`` as given, ``/v3`` added when it names no version
    (``http://keystone:5000`` and ``http://host/identity`` are both common)."""
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else f"{url}/v3"


def user_session(auth_url: str, *, password: str | None = None, token: str | None = None,
                 verify: bool | str = True, **identity: str | None):
    """A keystoneauth session of a user: v3 password auth, or (``token``) v3 token auth,
    which re-scopes an existing token to the project.

    ``identity``: username or user_id with user_domain_name/_id (password only), and
    project_id, or project_name with project_domain_name/_id. None values are left out;
    the session re-authenticates by itself when its token is about to expire.
    """
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    given = {k: v for k, v in identity.items() if v}
    url = v3_auth_url(auth_url)
    if token is not None:
        given = {k: v for k, v in given.items() if k.startswith("project")}
        auth = v3.Token(auth_url=url, token=token, **given)
    else:
        auth = v3.Password(auth_url=url, password=password, **given)
    return session.Session(auth=auth, verify=verify)


def register(sess, url: str, region: str, interfaces=INTERFACES,
             services=SERVICES, description: str = "Volume backups (Cinder v3 API)"
             ) -> list[Registered]:
    """Create (or update) the services and their endpoints; returns what is now there.

    :raises keystoneauth1.exceptions.HttpError: Keystone refused (e.g. not an admin).
    """
    ks = {"service_type": "identity", "interface": "public", "version": (3, 0)}
    out = []
    for service_type, name in services:
        found = sess.get("/services", params={"type": service_type},
                         endpoint_filter=ks).json()["services"]
        if found:
            service_id = found[0]["id"]
        else:
            body = {"service": {"type": service_type, "name": name, "enabled": True,
                                "description": description}}
            service_id = sess.post("/services", json=body,
                                   endpoint_filter=ks).json()["service"]["id"]
        endpoints = sess.get("/endpoints", params={"service_id": service_id},
                             endpoint_filter=ks).json()["endpoints"]
        for interface in interfaces:
            same = [e for e in endpoints if e["interface"] == interface
                    and (e.get("region_id") or e.get("region")) == region]
            body = {"endpoint": {"service_id": service_id, "interface": interface,
                                 "region_id": region, "url": url, "enabled": True}}
            if same:
                endpoint_id, created = same[0]["id"], False
                if same[0]["url"] != url or not same[0].get("enabled", True):
                    sess.patch(f"/endpoints/{endpoint_id}", json=body, endpoint_filter=ks)
            else:
                _ensure_region(sess, region, ks)
                endpoint_id = sess.post("/endpoints", json=body,
                                        endpoint_filter=ks).json()["endpoint"]["id"]
                created = True
            out.append(Registered(service_type, service_id, interface, endpoint_id, url,
                                  created))
    return out


def _ensure_region(sess, region: str, ks: dict) -> None:
    """Keystone needs the region to exist before an endpoint names it."""
    r = sess.get(f"/regions/{region}", endpoint_filter=ks, raise_exc=False)
    if r.status_code == 404:
        sess.post("/regions", json={"region": {"id": region}}, endpoint_filter=ks)
