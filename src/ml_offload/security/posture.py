"""The security posture of a configuration: pure checks behind `mlo security-audit`.

Each check looks at settings (and the stored keys, the data folder's permissions, and the
registry's deployments) and returns findings with a severity and the fix; nothing here changes
anything. The facts come from the gateway's own rules, not re-derived: whether auth is on, the
bind refusal (guard.py), whether a key is live (keys.py), the audit file (audit.py), and where
each deployment's prompts go and whether they are redacted (the registry's `ModelSpec`s:
`url` and `redact`, as the guard's `outbound` reads them).
"""

from __future__ import annotations

import math
import stat
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from ml_offload.config import Settings
from ml_offload.domain import ApiKey, ModelSpec, is_loopback_host, leaves_machine
from ml_offload.errors import safe_url
from ml_offload.security.audit import audit_path
from ml_offload.security.guard import auth_on as guard_auth_on
from ml_offload.security.guard import insecure_bind
from ml_offload.security.keys import is_live

# the bind rule and loopback test are the guard's and domain's; named here for the CLI
__all__ = ["SEVERITIES", "Finding", "check", "insecure_bind", "is_loopback_host", "sqlite_path"]

Severity = Literal["high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("high", "medium", "low", "info")
MIN_ADMIN_KEY_BITS = 128  # below: medium; below half of it: high
MIN_ADMIN_KEY_CHARS = 16  # shorter: high, whatever its characters
_LISTED = 5


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    check: str  # a stable name, for scripts reading --json
    message: str  # what is wrong, and how to fix it

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def auth_effective(settings: Settings, keys: Sequence[ApiKey] | None) -> bool:
    """Whether requests need a key, as the guard decides it (any stored key counts)."""
    return guard_auth_on(settings.security, bool(keys))


def check(
    settings: Settings,
    keys: Sequence[ApiKey] | None,
    *,
    deployments: Sequence[ModelSpec] = (),
    now: float | None = None,
    auth_on: bool | None = None,
) -> list[Finding]:
    """Every finding for `settings`, most severe first. `keys` None: they could not be read.
    `deployments`: the registry's deployments served elsewhere (`registry.remote_specs`)."""
    now = time.time() if now is None else now
    auth = auth_effective(settings, keys) if auth_on is None else auth_on
    found = [
        *check_bind(settings, auth),
        *check_admin_key(settings),
        *check_permissions(settings),
        *check_keys(settings, keys, now),
        *check_providers(deployments),
        *check_cors(settings),
        *check_audit(settings),
    ]
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def check_bind(settings: Settings, auth_on: bool) -> list[Finding]:
    host = settings.server.host
    if is_loopback_host(host):
        return []
    found = []
    if not auth_on:
        allowed = (
            " (allowed by security.allow_insecure_bind)"
            if settings.security.allow_insecure_bind
            else ""
        )
        found.append(
            Finding(
                "high",
                "auth-off-exposed",
                f"the gateway listens on {host} and anyone who can reach it may use it without "
                f"a key{allowed}; set security.admin_key (MLO_ADMIN_KEY) or create a key, or "
                "bind to 127.0.0.1",
            )
        )
    if settings.security.tls.cert_file is None:
        found.append(
            Finding(
                "high",
                "no-tls",
                f"the gateway listens on {host} without TLS, so keys and prompts cross the "
                "network in clear; set security.tls.cert_file and key_file (mlo serve "
                "--tls-cert --tls-key), or bind to 127.0.0.1 behind a TLS proxy",
            )
        )
    return found


def key_bits(secret: str) -> float:
    """Estimated entropy: the string's length times its per-character Shannon entropy (a
    repeated or short key scores low; 32 random bytes in base64 score about 220 bits)."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    return per_char * len(secret)


def check_admin_key(settings: Settings) -> list[Finding]:
    key = settings.security.admin_key
    if key is None:
        return []
    secret = key.get_secret_value()
    bits = key_bits(secret)
    if bits >= MIN_ADMIN_KEY_BITS:
        return []
    short = len(secret) < MIN_ADMIN_KEY_CHARS
    severity: Severity = "high" if short or bits < MIN_ADMIN_KEY_BITS / 2 else "medium"
    return [
        Finding(
            severity,
            "weak-admin-key",
            f"the admin key is weak ({len(secret)} characters, about {bits:.0f} bits; want "
            f"{MIN_ADMIN_KEY_BITS} bits); use a "
            "random one: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    ]


def data_paths(settings: Settings) -> list[tuple[str, Path]]:
    """What holds secrets or history on disk: the data folder, the SQLite file, the audit log."""
    paths = [("data folder", settings.storage.data_dir)]
    db = sqlite_path(settings.storage.db_url)
    if db is not None:
        paths.append(("database", db))
    audit = audit_path(settings)
    paths += [("audit folder", audit.parent), ("audit log", audit)]
    return paths


def sqlite_path(url: str) -> Path | None:
    scheme, sep, rest = url.partition(":///")
    if not sep or not scheme.startswith("sqlite") or rest in ("", ":memory:"):
        return None
    return Path(rest.split("?")[0])


def check_permissions(settings: Settings) -> list[Finding]:
    """Files other users can read or change (through folders they may enter)."""
    found = []
    for what, path in data_paths(settings):
        mode = _mode(path)
        if mode is None or not _reachable(path):
            continue
        fix = "chmod 700" if stat.S_ISDIR(mode) else "chmod 600"
        if mode & stat.S_IWOTH:
            found.append(
                Finding(
                    "high",
                    "world-writable",
                    f"the {what} {path} is writable by every user; {fix} {path}",
                )
            )
        elif mode & stat.S_IROTH:
            found.append(
                Finding(
                    "medium",
                    "world-readable",
                    f"the {what} {path} is readable by every user; {fix} {path}",
                )
            )
    return found


def _reachable(path: Path) -> bool:
    """Other users reach `path` only if they may enter every folder above it (o+x)."""
    for parent in path.absolute().parents:
        mode = _mode(parent)
        if mode is not None and not mode & stat.S_IXOTH:
            return False
    return True


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except OSError:
        return None


def check_keys(settings: Settings, keys: Sequence[ApiKey] | None, now: float) -> list[Finding]:
    if keys is None:
        return [Finding("info", "keys-unread", "keys were not checked: the database is unreadable")]
    live = [k for k in keys if is_live(k, now)]
    limits = settings.security.limits
    unlimited = [
        k
        for k in live
        if not k.admin
        and k.rpm is None
        and k.tpm is None
        and limits.default_rpm is None
        and limits.default_tpm is None
    ]
    found = []
    if unlimited:
        found.append(
            Finding(
                "medium",
                "key-without-limits",
                f"{_names(unlimited)} may send without a rate limit; give keys --rpm/--tpm, or "
                "set security.limits.default_rpm and default_tpm",
            )
        )
    forever = [k for k in live if k.expires_at is None]
    if forever:
        found.append(
            Finding(
                "low",
                "key-without-expiry",
                f"{_names(forever)} {_verb(forever, 'never expires', 'never expire')}; give keys "
                "an expiry and rotate them",
            )
        )
    bound = [k for k in live if k.cert_subject]
    if bound and settings.security.tls.client_ca_file is None:
        found.append(
            Finding(
                "medium",
                "binding-without-mtls",
                f"{_names(bound)} {_verb(bound, 'is', 'are')} bound to a certificate subject "
                "but mutual TLS is off, so no request can use them; set "
                "security.tls.client_ca_file (--tls-client-ca)",
            )
        )
    return found


def _names(keys: Sequence[ApiKey]) -> str:
    names = ", ".join(repr(k.name) for k in keys[:_LISTED])
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"key{'s' if len(keys) > 1 else ''} {names}{more}"


def _verb(keys: Sequence[ApiKey], one: str, many: str) -> str:
    return one if len(keys) == 1 else many


def check_providers(deployments: Sequence[ModelSpec]) -> list[Finding]:
    """Prompts that leave the machine unmasked, or in clear text."""
    found = []
    for spec in deployments:
        if spec.url is None or not leaves_machine(spec.url):
            continue
        url = safe_url(spec.url)
        if spec.source == "env":
            name, fix = f"{spec.name} (LLAMACPP_URL)", "declare it in [[models]] instead"
        else:
            name, fix = spec.name, "remove `redact = false` from its [[models]] entry"
        if not spec.redact:
            found.append(
                Finding(
                    "medium",
                    "provider-unredacted",
                    f"prompts for {name} go to {url} without masking secrets; {fix}",
                )
            )
        if urlsplit(spec.url).scheme in ("http", "ws"):
            found.append(
                Finding(
                    "medium",
                    "provider-cleartext",
                    f"prompts for {name} go to {url} unencrypted; use https",
                )
            )
    return found


def check_cors(settings: Settings) -> list[Finding]:
    if "*" not in settings.security.cors_origins:
        return []
    return [
        Finding(
            "medium",
            "cors-any-origin",
            "security.cors_origins allows any web page (`*`) to call the gateway from a "
            "browser; list the origins that need it",
        )
    ]


def check_audit(settings: Settings) -> list[Finding]:
    audit = settings.security.audit
    if not audit.enabled:
        return [
            Finding("low", "audit-off", "the audit log is off; set security.audit.enabled = true")
        ]
    if audit.log_prompts:
        return [
            Finding(
                "info",
                "audit-prompts",
                "the audit log stores prompt text (security.audit.log_prompts); protect it "
                "like the prompts themselves",
            )
        ]
    return []
