"""Each finding of `mlo security-audit` (security/posture.py), and the start-up bind refusal."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ml_offload.cli.commands import app
from ml_offload.config import Settings
from ml_offload.domain import ApiKey
from ml_offload.registry import remote_specs
from ml_offload.security import posture
from ml_offload.security.keys import KeyStore
from ml_offload.security.posture import Finding, check, insecure_bind, is_loopback_host
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository

NOW = 1_800_000_000.0
STRONG = secrets.token_urlsafe(32)


def settings(tmp_path: Path, **sections: Any) -> Settings:
    data = {"storage": {"data_dir": tmp_path / "data"}, **sections}
    return Settings(**data)


def checks(found: list[Finding]) -> dict[str, str]:
    return {f.check: f.severity for f in found}


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert is_loopback_host("localhost") and is_loopback_host("[::1]")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("::")
    assert not is_loopback_host("10.0.0.5") and not is_loopback_host("gw.example.com")


def test_loopback_default_has_no_bind_findings(tmp_path: Path) -> None:
    found = checks(check(settings(tmp_path), []))
    assert "no-tls" not in found and "auth-off-exposed" not in found


def test_exposed_without_auth_or_tls_is_high(tmp_path: Path) -> None:
    found = checks(check(settings(tmp_path, server={"host": "0.0.0.0"}), []))
    assert found["auth-off-exposed"] == "high"
    assert found["no-tls"] == "high"


def test_exposed_with_admin_key_and_tls_is_clean(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        server={"host": "0.0.0.0"},
        security={
            "admin_key": STRONG,
            "tls": {"cert_file": tmp_path / "c.pem", "key_file": tmp_path / "k.pem"},
        },
    )
    found = checks(check(s, []))
    assert "auth-off-exposed" not in found and "no-tls" not in found


def test_a_stored_key_turns_auto_auth_on(tmp_path: Path) -> None:
    s = settings(tmp_path, server={"host": "10.1.2.3"})
    key = ApiKey(id="k1", name="ci", rpm=10, expires_at=NOW + 3600)
    assert "auth-off-exposed" not in checks(check(s, [key], now=NOW))
    off = settings(tmp_path, server={"host": "10.1.2.3"}, security={"auth": "off"})
    assert "auth-off-exposed" in checks(check(off, [key], now=NOW))


@pytest.mark.parametrize(
    ("key", "severity"),
    [
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "high"),
        ("hunter2hunter2", "high"),
        (secrets.token_hex(12), "medium"),
        (STRONG, None),
    ],
)
def test_admin_key_strength(tmp_path: Path, key: str, severity: str | None) -> None:
    found = checks(check(settings(tmp_path, security={"admin_key": key}), []))
    assert found.get("weak-admin-key") == severity


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder other users may enter (pytest's own tmp folders are private: 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="mlo-posture-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_world_readable_and_writable_files(open_folder: Path) -> None:
    s = settings(open_folder)
    data = s.storage.data_dir
    (data / "audit").mkdir(parents=True)
    db = data / "registry.db"
    db.write_bytes(b"")
    log = data / "audit" / "audit.jsonl"
    log.write_bytes(b"")
    for path, mode in ((data, 0o755), (data / "audit", 0o711), (db, 0o644), (log, 0o666)):
        path.chmod(mode)
    found = {f.message.split(" is ")[0]: f for f in check(s, []) if f.check.startswith("world-")}
    assert set(found) == {f"the data folder {data}", f"the database {db}", f"the audit log {log}"}
    assert found[f"the data folder {data}"].severity == "medium"
    assert "chmod 700" in found[f"the data folder {data}"].message
    assert found[f"the database {db}"].severity == "medium"
    assert found[f"the audit log {log}"].severity == "high"
    assert "chmod 600" in found[f"the audit log {log}"].message
    data.chmod(0o700)  # a private folder protects what is inside it
    assert not [f for f in check(s, []) if f.check.startswith("world-")]


def test_keys_without_limits_or_expiry(tmp_path: Path) -> None:
    keys = [
        ApiKey(id="1", name="open", expires_at=NOW + 60),
        ApiKey(id="2", name="forever", rpm=5),
        ApiKey(id="3", name="fine", tpm=1000, expires_at=NOW + 60),
        ApiKey(id="4", name="gone", revoked_at=NOW - 1),  # revoked: not a finding
        ApiKey(id="5", name="old", expires_at=NOW - 1),  # expired: not a finding
    ]
    found = {f.check: f for f in check(settings(tmp_path), keys, now=NOW)}
    assert found["key-without-limits"].severity == "medium"
    assert "'open'" in found["key-without-limits"].message
    assert "'fine'" not in found["key-without-limits"].message
    assert found["key-without-expiry"].message.startswith("key 'forever' never")
    limited = settings(tmp_path, security={"limits": {"default_rpm": 60}})
    assert "key-without-limits" not in checks(check(limited, keys, now=NOW))


def test_unreadable_keys_are_reported(tmp_path: Path) -> None:
    assert checks(check(settings(tmp_path), None))["keys-unread"] == "info"


def test_key_bound_to_a_subject_needs_mutual_tls(tmp_path: Path) -> None:
    key = ApiKey(id="1", name="svc", rpm=1, expires_at=NOW + 9, cert_subject="CN=svc")
    assert checks(check(settings(tmp_path), [key], now=NOW))["binding-without-mtls"] == "medium"


def test_providers_unredacted_or_in_clear(tmp_path: Path) -> None:
    models = [
        {"name": "cloud", "url": "https://api.example.com/v1", "redact": False},
        {"name": "lan", "url": "http://10.0.0.9:8000/v1"},
        {"name": "local", "url": "http://127.0.0.1:8080/v1", "redact": False},
    ]
    s = settings(tmp_path, models=models, llamacpp_url="http://gpu.example.com")
    found = check(s, [], deployments=remote_specs(s))
    messages = [(f.check, f.message) for f in found if f.check.startswith("provider-")]
    assert [c for c, m in messages if "cloud" in m] == ["provider-unredacted"]
    assert [c for c, m in messages if "lan" in m] == ["provider-cleartext"]
    # redacted like any address that leaves the machine (issue 12); only its clear text is flagged
    assert [c for c, m in messages if "LLAMACPP_URL" in m] == ["provider-cleartext"]
    assert not [m for _, m in messages if "local" in m]


def test_cors_any_origin(tmp_path: Path) -> None:
    assert (
        checks(check(settings(tmp_path, security={"cors_origins": ["*"]}), []))["cors-any-origin"]
        == "medium"
    )
    listed = settings(tmp_path, security={"cors_origins": ["https://app.example.com"]})
    assert "cors-any-origin" not in checks(check(listed, []))


def test_audit_off_and_prompt_logging(tmp_path: Path) -> None:
    off = settings(tmp_path, security={"audit": {"enabled": False}})
    assert checks(check(off, []))["audit-off"] == "low"
    prompts = settings(tmp_path, security={"audit": {"log_prompts": True}})
    assert checks(check(prompts, []))["audit-prompts"] == "info"


def test_findings_are_sorted_worst_first(tmp_path: Path) -> None:
    s = settings(tmp_path, server={"host": "0.0.0.0"}, security={"audit": {"enabled": False}})
    severities = [f.severity for f in check(s, [])]
    assert severities == sorted(severities, key=posture.SEVERITIES.index)
    assert severities[0] == "high" and severities[-1] == "low"


def test_insecure_bind_refusal(tmp_path: Path) -> None:
    exposed = settings(tmp_path, server={"host": "0.0.0.0"})
    message = insecure_bind(exposed, auth_on=False)
    assert message is not None and "--allow-insecure" in message and "MLO_ADMIN_KEY" in message
    assert insecure_bind(exposed, auth_on=True) is None
    assert insecure_bind(settings(tmp_path), auth_on=False) is None
    allowed = settings(tmp_path, server={"host": "0.0.0.0"}, security={"allow_insecure_bind": True})
    assert insecure_bind(allowed, auth_on=False) is None


def _audit(tmp_path: Path, toml: str, *args: str) -> Any:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{toml}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLO_")}
    return CliRunner().invoke(app, ["security-audit", "--config", str(cfg), *args], env=env)


def test_cli_exits_1_on_a_high_finding_and_prints_json(tmp_path: Path) -> None:
    bad = _audit(tmp_path, '[server]\nhost = "0.0.0.0"\n', "--json")
    assert bad.exit_code == 1, bad.output
    assert '"auth-off-exposed"' in bad.output and '"severity": "high"' in bad.output
    fine = _audit(tmp_path, f'[security]\nadmin_key = "{STRONG}"\n')
    assert fine.exit_code == 0, fine.output


def test_cli_reads_the_stored_keys(tmp_path: Path) -> None:
    async def create() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'registry.db'}")
        try:
            await KeyStore(KeyRepository(db)).create("ci-runner")
        finally:
            await db.close()

    asyncio.run(create())
    done = _audit(tmp_path, '[server]\nhost = "0.0.0.0"\n', "--json")
    assert "'ci-runner'" in done.output and '"key-without-limits"' in done.output
    assert '"auth-off-exposed"' not in done.output  # a stored key turns auth on (auto)
    assert done.exit_code == 1, done.output  # still no TLS on 0.0.0.0


def test_cli_finds_a_cloud_provider_on_its_default_url_unredacted(tmp_path: Path) -> None:
    """A provider without `url` goes to its default address (the registry's rule), so
    `redact = false` there is a finding; one left to the default is redacted, so it is not."""
    toml = (
        '[[models]]\nname = "gpt"\nbackend = "openai"\napi_key = "sk-x"\nredact = false\n'
        '[[models]]\nname = "claude"\nbackend = "anthropic"\napi_key = "sk-y"\n'
    )
    done = _audit(tmp_path, toml, "--json")
    assert done.exit_code == 0, done.output
    assert "prompts for gpt go to https://api.openai.com without masking secrets" in done.output
    assert "claude" not in done.output
