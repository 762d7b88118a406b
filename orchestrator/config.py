"""One Settings object: defaults, then ORCH_* environment variables, then overrides.

This module is the only reader of the environment for the orchestrator.
"""
from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on", "t", "y"):
        return True
    if v in ("0", "false", "no", "off", "f", "n", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def default_host() -> str:
    """This machine's short host name, normalised for queue names."""
    return normalise_host(socket.gethostname().split(".")[0] or "localhost")


def normalise_host(name: str) -> str:
    """Lower-case a host name and keep only [a-z0-9.-] so it is a safe queue name."""
    out = "".join(c if (c.isalnum() or c in ".-") else "-" for c in name.strip().lower())
    if not out:
        raise ValueError("host name must not be empty")
    return out


CHOICES = {
    "backup_store": ("posix", "s3"),
    "backup_compression": ("zstd", "zlib", "none"),
    "auth": ("noauth", "token", "keystone"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "keystone_interface": ("public", "internal", "admin"),
    "log_format": ("json", "text"),
}
_LARGE = 2**31 - 1
BOUNDS = (
    ("api_port", 0, 65535), ("api_workers", 1, 256), ("api_threads", 1, 1024),
    ("heartbeat_interval", 0.01, 86400), ("service_down_time", 0.01, 86400 * 7),
    ("lease_ttl", 0.1, 86400), ("reaper_interval", 0.01, 86400),
    ("dispatch_resend_after", 0.01, 86400), ("reservation_expire", 1, 86400 * 365),
    ("quota_backups", -1, _LARGE), ("quota_backup_gigabytes", -1, _LARGE),
    ("quota_volumes", -1, _LARGE), ("quota_gigabytes", -1, _LARGE),
    ("quota_snapshots", -1, _LARGE), ("max_list_limit", 1, 100000),
    ("max_body_bytes", 1, 1 << 30),
    ("gc_interval", 0, 86400 * 365), ("gc_grace", 0, 86400 * 365),
    ("policy_tick_interval", 0.1, 3600), ("policy_tick_pause", 0, 60),
    ("policy_tick_threads", 1, 64),
    ("keystone_token_cache_time", -1, 86400),
    ("worker_metrics_port", 0, 65535), ("backup_stale_after", 60, 86400 * 365),
    ("health_timeout", 0.1, 60),
)
KEYSTONE_REQUIRED = ("keystone_auth_url", "keystone_username", "keystone_password",
                     "keystone_project_name")
BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "amqp", "amqps", "pyamqp", "memory")


_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:)\S*@")
_QUERY_PASSWORD = re.compile(r"([?&;](?:password|passwd|pwd|secret)=)[^&;\s]*", re.IGNORECASE)


def without_password(url: str) -> str:
    """A URL (or a text holding URLs) as it may be printed: every password replaced by ***.

    The user-info password runs to the last ``@`` of the URL, so a password holding an
    unescaped ``@`` or ``/`` is masked whole; a ``password=`` query parameter is masked
    too. Masking too much is harmless; masking too little is not.
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))


@dataclass
class Settings:
    """Every tunable of the service. Field names map to ORCH_<UPPER_NAME> variables."""

    state_dir: str = "./var"
    database_url: str = ""          # default: sqlite:///<state_dir>/orchestrator.db
    broker_url: str = ""            # default: redis+socket://<state_dir>/redis.sock
    api_host: str = "127.0.0.1"
    api_port: int = 8776
    api_workers: int = 2
    api_threads: int = 4
    api_keepalive: bool = True      # HTTP/1.1 keep-alive (serve.py)
    public_endpoint: str = ""       # base URL for links; default: from the request
    backup_path: str = ""           # POSIX backup store; default: <state_dir>/backups
    volume_path: str = ""           # file volume backend root; default: <state_dir>/volumes
    backup_store: str = "posix"     # posix | s3
    s3_endpoint_url: str = ""
    s3_bucket: str = "volumebackups"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_region: str = "us-east-1"
    backup_compression: str = "zstd"
    heartbeat_interval: float = 10.0
    service_down_time: float = 60.0
    backup_use_same_host: bool = False
    default_availability_zone: str = "nova"
    auth: str = "noauth"
    admin_names: str = "admin"
    lease_ttl: float = 60.0
    reaper_interval: float = 15.0
    dispatch_resend_after: float = 30.0
    reservation_expire: float = 86400.0
    quota_backups: int = 10
    quota_backup_gigabytes: int = 1000
    quota_volumes: int = 10
    quota_gigabytes: int = 1000
    quota_snapshots: int = 10
    max_list_limit: int = 1000
    max_body_bytes: int = 1048576
    log_level: str = "INFO"
    # Any backup of the shared-block format may be deleted, whatever depends on it
    # (Cinder's rule, the default: only one without incremental children).
    backup_delete_any: bool = False
    # Seconds between scheduled garbage collections of each store (0: never scheduled).
    gc_interval: float = 3600.0
    # A delete queues a collection of what it released (else they wait for the schedule).
    gc_after_delete: bool = True
    # An object no SQL row knows is garbage only once this much older than the oldest
    # job still running on its store (clock skew between hosts, slow uploads).
    gc_grace: float = 3600.0
    # Testing only: a worker that reaches the named crash point kills itself (workers/faults).
    crash_point: str = ""
    policy_tick_interval: float = 10.0  # how often beat runs the backup-policy tick
    # Seconds a tick waits between claiming a due run and committing it: for the
    # fault-injection tests (a process killed mid-tick), never set in production.
    policy_tick_pause: float = 0.0
    policy_tick_threads: int = 4        # due policies a tick runs at once
    # oslo.policy overrides (YAML); empty: the built-in defaults (orchestrator.policy)
    policy_file: str = ""
    # ORCH_AUTH=keystone: keystonemiddleware's auth_token, validating as this service user
    keystone_auth_url: str = ""
    keystone_username: str = ""
    keystone_password: str = dataclasses.field(default="", repr=False)  # never printed
    keystone_project_name: str = ""
    keystone_user_domain_name: str = "Default"
    keystone_project_domain_name: str = "Default"
    keystone_memcached_servers: str = ""   # host:port,...; empty: a per-process cache
    keystone_token_cache_time: int = 300   # seconds a validated token is trusted; -1: never
    keystone_region_name: str = ""
    keystone_interface: str = "internal"  # which identity endpoint of the catalog validates
    # TLS for the API (serve.py hands them to granian): a PEM certificate (chain) and its
    # PKCS#8 PEM key. Both or neither; unset, the API speaks plain HTTP.
    api_tls_cert: str = ""
    api_tls_key: str = ""
    log_format: str = "json"        # json (one object per line) | text (development)
    worker_metrics_port: int = 9106  # a worker's /metrics and /healthcheck; 0: off
    worker_metrics_host: str = "127.0.0.1"
    backup_stale_after: float = 86400.0  # a volume's newest good backup older: stale
    health_timeout: float = 2.0     # seconds each /healthcheck probe may take

    # Encryption at rest (orchestrator/keys.py): every new backup is encrypted with its
    # project's data key unless this is explicitly false. The key encryption key comes
    # from ORCH_KEK (base64 of 32 bytes, a secret) or else the file ORCH_KEK_FILE
    # (default: <state_dir>/kek.key).
    encryption: bool = True
    kek: str = ""
    kek_file: str = ""

    def __repr__(self) -> str:
        """Never the secrets: URLs masked, the S3 secret key left out."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("s3_secret_key", "keystone_password", "kek"):
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                value = without_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        state = Path(self.state_dir).absolute()
        self.state_dir = str(state)
        if not self.database_url:
            self.database_url = f"sqlite:///{state / 'orchestrator.db'}"
        if not self.broker_url:
            self.broker_url = f"redis+socket://{state / 'redis.sock'}"
        if not self.backup_path:
            self.backup_path = str(state / "backups")
        if not self.volume_path:
            self.volume_path = str(state / "volumes")
        if not self.kek_file:
            self.kek_file = str(state / "kek.key")
        if self.service_down_time <= self.heartbeat_interval:
            # Cinder's rule: a down time not above the report interval would flap.
            self.service_down_time = self.heartbeat_interval * 2.5
        self.validate()

    def validate(self) -> None:
        """Refuse a value no process could work with, naming its variable.

        :raises ValueError: one line, e.g. ``ORCH_BACKUP_COMPRESSION must be one of
            zstd, zlib, none (not 'lz4')``.
        """
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if (value.upper() if name == "log_level" else value.lower() if name == "log_format"
                    else value) not in allowed:
                raise ValueError(f"ORCH_{name.upper()} must be one of {', '.join(allowed)} "
                                 f"(not {value!r})")
        for name, low, high in BOUNDS:
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"ORCH_{name.upper()} must be between {low} and {high} "
                                 f"(not {value!r})")
        scheme = self.broker_url.split("://", 1)[0] if "://" in self.broker_url else ""
        if scheme not in BROKER_SCHEMES:
            raise ValueError(f"ORCH_BROKER_URL must be a URL of {', '.join(BROKER_SCHEMES)} "
                             f"(not {without_password(self.broker_url)!r})")
        if self.auth == "keystone":
            missing = [f"ORCH_{name.upper()}" for name in KEYSTONE_REQUIRED
                       if not getattr(self, name)]
            if missing:
                raise ValueError(f"ORCH_AUTH=keystone needs {', '.join(missing)}")
        if bool(self.api_tls_cert) != bool(self.api_tls_key):
            raise ValueError("ORCH_API_TLS_CERT and ORCH_API_TLS_KEY go together: set both "
                             "(a PEM certificate and its PKCS#8 key) or neither")
        for name in ("api_tls_cert", "api_tls_key"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"ORCH_{name.upper()}: cannot read {path!r}")
        try:
            make_url(self.database_url)
        except Exception:
            raise ValueError("ORCH_DATABASE_URL is not a database URL (such as "
                             "sqlite:///path or postgresql+psycopg://user@host/db)") from None

    @property
    def admin_set(self) -> frozenset[str]:
        """Names (user or project ids) that are admin in noauth mode."""
        return frozenset(n.strip() for n in self.admin_names.split(",") if n.strip())

    @property
    def api_scheme(self) -> str:
        """https when the API serves TLS (ORCH_API_TLS_CERT), else http."""
        return "https" if self.api_tls_cert else "http"

    @property
    def log_dir(self) -> str:
        return str(Path(self.state_dir) / "logs")

    @classmethod
    def load(cls, program: str = "orchestrator") -> Settings:
        """Settings from the environment for a process that starts: a bad value ends it
        with one clear line on stderr (exit status 2) before it says it is running."""
        try:
            return cls.from_env()
        except ValueError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    @classmethod
    def from_env(cls, environ: dict | None = None, **overrides) -> Settings:
        """Build settings from defaults, ORCH_* variables and keyword overrides."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"ORCH_{f.name.upper()}")
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = _bool(raw)
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"ORCH_{f.name.upper()}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """The settings as ORCH_* variables, to hand to child processes."""
        env = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            text = str(value).lower() if isinstance(value, bool) else str(value)
            env[f"ORCH_{f.name.upper()}"] = text
        return env
