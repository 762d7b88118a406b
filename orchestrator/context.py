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

    def can_write(self) -> bool:
        """Readers may only look."""
        return self.is_admin or "reader" not in self.roles or "member" in self.roles
