"""Who is asking: the request context every domain function takes."""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


@dataclass(frozen=True)
class RequestContext:
    user_id: str
    project_id: str
    is_admin: bool = False
    roles: tuple[str, ...] = field(default_factory=tuple)
    request_id: str | None = None
    # Keystone (ORCH_AUTH=keystone): what auth_token says of the token, as Cinder keeps it.
    # ``roles`` are then Keystone's, implied ones included (admin → member → reader).
    keystone: bool = False
    user_domain_id: str | None = None
    project_domain_id: str | None = None
    domain_id: str | None = None          # a domain-scoped token's domain
    system_scope: str | None = None       # "all" for a system-scoped token
    is_admin_project: bool = True
    service_roles: tuple[str, ...] = field(default_factory=tuple)
    service_user_id: str | None = None
    service_project_id: str | None = None

    def can_write(self) -> bool:
        """Readers may only look."""
        if self.keystone:
            return self.is_admin or "member" in self.roles
        return self.is_admin or "reader" not in self.roles or "member" in self.roles
