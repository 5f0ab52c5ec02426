"""API keys: format, storage (only a hash), verification, scopes, the guard's checks, and
`mlo keys`. The database tests run on SQLite and, when `MLO_TEST_POSTGRES_URL` is set, on
PostgreSQL (like tests/unit/storage/test_db.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from ml_offload.cli.commands import app
from ml_offload.config import SecuritySettings
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import (
    AuthError,
    EngineError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
)
from ml_offload.security.audit import prompt_sha256
from ml_offload.security.guard import Guard, is_admin_path
from ml_offload.security.keys import (
    MAX_LIMIT,
    KeyStore,
    bearer_token,
    in_scope,
    new_key,
    parse_expiry,
    sha256_hex,
    split_key,
)
from ml_offload.services import build_guard
from ml_offload.storage.db import Database
from ml_offload.storage.keys_repo import KeyRepository
from ml_offload.storage.tables import api_keys
from tests.unit.storage.test_db import BACKENDS, database_url, reset

LOCAL = ModelSpec(name="tiny", path=Path("/m/tiny.gguf"), aliases=("t",))
CLAUDE = ModelSpec(
    name="claude", kind=DeploymentKind.CLOUD, url="https://api.anthropic.com", backend="anthropic"
)
SPECS = {n: s for s in (LOCAL, CLAUDE) for n in s.names}


def resolve(name: str) -> ModelSpec:
    return SPECS[name]


# -- format, parsing, scopes ------------------------------------------------------------------


def test_new_key_splits_back_and_stores_the_secret_hash() -> None:
    key_id, token, digest = new_key()
    assert token.startswith(f"mlo-{key_id}-")
    parts = split_key(token)
    assert parts is not None and parts[0] == key_id
    assert sha256_hex(parts[1]) == digest
    assert len(parts[1]) >= 43  # 32 random bytes, urlsafe base64
    assert new_key()[1] != token


@pytest.mark.parametrize("token", ["sk-abc", "mlo-", "mlo-abc", "mlo--secret", "mlo-" + "a" * 40])
def test_malformed_keys_do_not_split(token: str) -> None:
    assert split_key(token) is None


def test_bearer_and_x_api_key() -> None:
    assert bearer_token({"authorization": "Bearer k1"}) == "k1"
    assert bearer_token({"authorization": "bearer  k1 "}) == "k1"
    assert bearer_token({"x-api-key": "k2"}) == "k2"
    assert bearer_token({"authorization": "Basic abc", "x-api-key": "k3"}) == "k3"
    assert bearer_token({"authorization": "Bearer "}) is None
    assert bearer_token({}) is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86_400), ("12h", 43_200), ("90m", 5400), ("2w", 1_209_600)]
)
def test_expiry_durations(text: str, seconds: int) -> None:
    assert parse_expiry(text, now=1000.0) == 1000.0 + seconds


def test_expiry_iso_dates_and_errors() -> None:
    assert parse_expiry("2030-01-01", now=0) == 1_893_456_000.0  # UTC midnight
    assert parse_expiry("2030-01-01T02:00:00+02:00", now=0) == 1_893_456_000.0
    with pytest.raises(InvalidRequest, match="30d"):
        parse_expiry("soon")
    with pytest.raises(InvalidRequest, match="past"):
        parse_expiry("2001-01-01")


def test_scopes_by_name_alias_and_backend() -> None:
    assert in_scope(["tiny"], "t", LOCAL)  # the alias resolves to an allowed name
    assert in_scope(["t"], "tiny", LOCAL)
    assert in_scope(["anthropic:*"], "claude", CLAUDE)
    assert not in_scope(["anthropic:*"], "tiny", LOCAL)
    assert in_scope(["local:*"], "tiny", LOCAL)
    assert not in_scope(["tiny"], "claude", CLAUDE)


@pytest.mark.parametrize(
    ("method", "path", "admin"),
    [
        ("POST", "/models/tiny/load", True),
        ("POST", "/models/unload_all", True),
        ("DELETE", "/models/tiny", True),
        ("GET", "/models/tiny", False),
        ("GET", "/admin/keys", True),
        ("POST", "/api/pull", True),
        ("POST", "/v1/chat/completions", False),
        ("POST", "/api/chat", False),
    ],
)
def test_admin_paths(method: str, path: str, admin: bool) -> None:
    assert is_admin_path(method, path) is admin


# -- the database ---------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = database_url(request.param, tmp_path)
    if request.param == "postgresql":
        await reset(url)
    database = await Database.open(url)
    yield database
    await database.close()


@pytest.fixture
async def store(db: Database) -> AsyncIterator[KeyStore]:
    keys = KeyStore(KeyRepository(db))
    yield keys
    await keys.close()


async def rows(db: Database) -> list[dict[str, Any]]:
    async with db.begin() as conn:
        return [dict(r._mapping) for r in await conn.execute(sa.select(api_keys))]


async def test_only_the_hash_is_stored(store: KeyStore, db: Database) -> None:
    created = await store.create("ci", models=["tiny"], rpm=5, tpm=100)
    [row] = await rows(db)
    secret = created.secret.rsplit("-", 1)[-1]
    assert created.secret not in json.dumps(row, default=str)
    assert secret not in json.dumps(row, default=str)
    assert row["secret_sha256"] == sha256_hex(created.secret.split("-", 2)[2])
    assert (row["id"], row["name"], row["models"], row["rpm"], row["tpm"]) == (
        created.key.id,
        "ci",
        ["tiny"],
        5,
        100,
    )


async def test_verify(store: KeyStore) -> None:
    created = await store.create("ci", expires_at=time.time() + 60)
    key = await store.verify(created.secret, time.time())
    assert key.id == created.key.id and key.expires_at == pytest.approx(created.key.expires_at)
    wrong = created.secret[:-2] + ("AA" if not created.secret.endswith("AA") else "BB")
    for token in (wrong, "mlo-000000000000-nothing", "not-a-key"):
        with pytest.raises(AuthError, match="invalid API key"):
            await store.verify(token, time.time())
    with pytest.raises(AuthError, match="expired"):
        await store.verify(created.secret, time.time() + 120)


async def test_the_hot_lookup_reads_what_the_pool_reads(db: Database) -> None:
    repo = KeyRepository(db)
    store = KeyStore(repo)
    made = await store.create(
        "full", models=["a", "b:*"], admin=True, rpm=3, tpm=4, expires_at=2e9, cert_subject="CN=x"
    )
    await store.revoke("full")
    assert await repo.lookup(made.key.id) == await repo.get(made.key.id)
    [(key, digest)] = [await repo.lookup(made.key.id)]  # type: ignore[misc]
    assert key.admin and key.models == ("a", "b:*") and key.expires_at == 2e9
    assert key.revoked_at is not None and digest == sha256_hex(made.secret.split("-", 2)[2])
    assert await repo.lookup("nothing") is None
    # The direct read fails (a database restart, say): the lookup falls back to the pool.
    assert repo._reader is not None

    async def broken(sql: str, key_id: str) -> None:
        raise OSError("the database went away")

    repo._reader._fetch = broken
    assert (await repo.lookup(made.key.id)) == await repo.get(made.key.id)
    assert repo._reader is None  # dropped, to be opened again later
    await repo.close()


async def test_the_hot_lookup_sees_a_revocation_from_another_gateway(db: Database) -> None:
    """The lookup keeps rows between requests; a commit anywhere else must end that at once."""
    here, there = KeyStore(KeyRepository(db)), KeyStore(KeyRepository(db))
    made = await here.create("shared")
    for _ in range(3):  # read, then served again from what was read
        assert (await here.verify(made.secret, time.time())).id == made.key.id
    await there.revoke("shared")
    with pytest.raises(AuthError, match="revoked"):
        await here.verify(made.secret, time.time())


async def test_revoke_by_id_or_name(store: KeyStore) -> None:
    a = await store.create("alice")
    await store.create("bob")
    await store.create("bob")
    assert (await store.revoke("alice")).id == a.key.id
    with pytest.raises(AuthError, match="revoked"):
        await store.verify(a.secret, time.time())
    assert (await store.revoke(a.key.id)).revoked_at is not None  # again: no error
    with pytest.raises(InvalidRequest, match="several keys"):
        await store.revoke("bob")
    with pytest.raises(NotFound):
        await store.revoke("carol")
    listed = await store.list()
    assert [k.name for k in listed] == ["alice", "bob", "bob"]
    assert [k.revoked_at is not None for k in listed] == [True, False, False]


async def test_any_exist(store: KeyStore) -> None:
    assert not await store.any_exist()
    await store.revoke((await store.create("x")).key.id)
    assert await store.any_exist()  # revoked keys keep auth on


def test_downgrade_and_upgrade_the_keys_table(tmp_path: Path) -> None:
    from alembic import command

    from ml_offload.storage.db import alembic_config

    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    command.downgrade(config, "0002")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert "api_keys" not in sa.inspect(conn).get_table_names()
    command.upgrade(config, "head")
    with engine.connect() as conn:
        assert "api_keys" in sa.inspect(conn).get_table_names()
    engine.dispose()


# -- the guard ------------------------------------------------------------------------------


def guard_for(db: Database | None, tmp_path: Path, **security: Any) -> Guard:
    settings = SecuritySettings.model_validate({"audit": {"enabled": False}, **security})
    return build_guard(settings, resolve, db)


async def ask(
    guard: Guard, token: str | None = None, path: str = "/v1/chat/completions", **kw: Any
) -> Any:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(kw.get("headers", {}))
    return await guard.authenticate(
        headers,
        method=kw.get("method", "POST"),
        path=path,
        client="127.0.0.1:5000",
        cert_subject=kw.get("cert_subject"),
    )


async def test_auth_is_off_until_a_key_exists(
    store: KeyStore, db: Database, tmp_path: Path
) -> None:
    guard = guard_for(db, tmp_path)
    await guard.start()
    assert not guard.auth_on
    assert (await ask(guard)).key is None
    created = await store.create("ci")  # as `mlo keys create` would, behind the gateway's back
    ctx = await ask(guard, created.secret)  # a request with a key looks again at once
    assert guard.auth_on and ctx.key is not None and ctx.key.id == created.key.id
    with pytest.raises(AuthError, match="missing API key"):
        await ask(guard)
    await guard.close()


async def test_required_admin_key_scopes_and_cert_binding(
    store: KeyStore, db: Database, tmp_path: Path
) -> None:
    guard = guard_for(db, tmp_path, auth="required", admin_key="root-secret")
    await guard.start()
    assert guard.auth_on
    with pytest.raises(AuthError):
        await ask(guard, "wrong")
    admin = await ask(guard, "root-secret", "/admin/keys", method="GET")
    assert admin.admin and admin.key is None
    assert (await ask(guard, "/health", "/health")).key is None  # public: no key looked at
    scoped = await store.create("scoped", models=["anthropic:*"])
    with pytest.raises(PermissionDenied, match="admin"):
        await ask(guard, scoped.secret, "/models/tiny/load")
    ctx = await ask(guard, scoped.secret)
    await guard.admit(ctx, "chat", {"model": "claude", "messages": []})
    with pytest.raises(PermissionDenied, match="may not use model 't'"):
        await guard.admit(ctx, "chat", {"model": "t", "messages": []})
    bound = await store.create("bound", cert_subject="CN=ci")
    with pytest.raises(AuthError, match="certificate"):
        await ask(guard, bound.secret)
    assert (await ask(guard, bound.secret, cert_subject="CN=ci")).key is not None
    await guard.close()


async def test_a_fallback_is_in_scope_on_its_own_name(
    store: KeyStore, db: Database, tmp_path: Path
) -> None:
    guard = guard_for(db, tmp_path, auth="required")
    await guard.start()
    for scopes in (["tiny"], ["local:*"]):  # the model asked for, or every local model
        ctx = await ask(guard, (await store.create(f"k{len(scopes[0])}", models=scopes)).secret)
        await guard.admit(ctx, "chat", {"model": "t", "messages": []})
        assert await guard.enter(ctx, LOCAL, "chat", {"model": "t"}) == []
        with pytest.raises(PermissionDenied, match="may not use 'claude', the fallback of 't'"):
            await guard.enter(ctx, CLAUDE, "chat", {"model": "t"})
    both = await ask(guard, (await store.create("both", models=["tiny", "anthropic:*"])).secret)
    await guard.admit(both, "chat", {"model": "t", "messages": []})
    assert await guard.enter(both, CLAUDE, "chat", {"model": "t"}) == []
    await guard.close()


def test_the_error_when_no_deployment_is_left(tmp_path: Path) -> None:
    guard = guard_for(None, tmp_path)
    skipped = PermissionDenied("key k1 (ci) may not use 'claude', the fallback of 'tiny'")
    failed = guard.none_left("tiny", EngineError("model 'tiny' failed to start"), [skipped])
    assert failed.status == 502
    assert failed.message == (
        "model 'tiny' failed to start; not tried: key k1 (ci) may not use 'claude', "
        "the fallback of 'tiny'"
    )
    limited = RateLimited("model 'claude' is over its limit", headers={"x-a": "1"})
    refused = guard.none_left("tiny", None, [skipped, limited])
    assert refused is limited and refused.status == 429 and refused.headers == {"x-a": "1"}
    assert refused.message.endswith("; also not tried: " + skipped.message)
    cooling = guard.none_left("tiny", None, [PermissionDenied("may not use 'claude'")])
    assert cooling.status == 503 and "that this request may use" in cooling.message


async def test_each_message_on_a_connection_rechecks_the_key(
    store: KeyStore, db: Database, tmp_path: Path
) -> None:
    guard = guard_for(db, tmp_path)
    created = await store.create("ws")
    await guard.start()
    conn = await ask(guard, created.secret, "/ws/inference", method="WEBSOCKET")
    await guard.admit(guard.derive(conn), "chat", {"model": "tiny"})
    await store.revoke("ws")
    with pytest.raises(AuthError, match="revoked"):
        await guard.admit(guard.derive(conn), "chat", {"model": "tiny"})
    await guard.close()


async def test_auth_off_ignores_keys(store: KeyStore, db: Database, tmp_path: Path) -> None:
    await store.create("ci")
    guard = guard_for(db, tmp_path, auth="off")
    await guard.start()
    assert not guard.auth_on
    assert (await ask(guard, "anything", "/models/tiny/load")).key is None
    await guard.close()


# -- the CLI --------------------------------------------------------------------------------


def test_cli_create_ls_revoke(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {"MLO_CONFIG": str(config), "COLUMNS": "200"}
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["keys", "create", "--name", "ci", "--models", "tiny,t", "--rpm", "5", "--expires", "30d"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    assert token.startswith("mlo-") and "\n" not in token
    assert "shown only now" in made.stderr
    listed = runner.invoke(app, ["keys", "ls"], env=env)
    assert listed.exit_code == 0 and "ci" in listed.stdout and "tiny, t" in listed.stdout
    assert token.split("-", 2)[2] not in listed.stdout
    data = json.loads(runner.invoke(app, ["keys", "ls", "--json"], env=env).stdout)
    assert [(k["name"], k["models"], k["rpm"], k["revoked_at"]) for k in data] == [
        ("ci", ["tiny", "t"], 5, None)
    ]
    db_bytes = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("registry.db*"))
    assert token.split("-", 2)[2].encode() not in db_bytes
    revoked = runner.invoke(app, ["keys", "revoke", "ci"], env=env)
    assert revoked.exit_code == 0 and "revoked key" in revoked.stdout
    data = json.loads(runner.invoke(app, ["keys", "ls", "--json"], env=env).stdout)
    assert data[0]["revoked_at"] is not None


# -- audit events ---------------------------------------------------------------------------


async def test_refused_and_answered_requests_are_audited(
    store: KeyStore, db: Database, tmp_path: Path
) -> None:
    settings = SecuritySettings.model_validate({"auth": "required", "audit": {"log_prompts": True}})
    guard = build_guard(settings, resolve, db, audit_file=tmp_path / "audit" / "audit.jsonl")
    await guard.start()
    created = await store.create("ci")
    with pytest.raises(AuthError):
        await ask(guard)
    ctx = await ask(guard, created.secret)
    messages = [{"role": "user", "content": "hello"}]
    await guard.admit(ctx, "chat", {"model": "t", "messages": messages})
    ctx.backend, ctx.prompt_tokens, ctx.completion_tokens, ctx.status = "tiny", 3, 2, 200
    await guard.finish(ctx)
    await guard.finish(ctx)  # once only
    await ask(guard, path="/health")  # public paths are not audited
    await guard.close()
    lines = (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    refused, answered = [e for e in events if e.get("audit") != "checkpoint"]  # signed ones
    assert (refused["status"], refused["key_id"], refused["error"]) == (
        401,
        None,
        "invalid_api_key",
    )
    assert answered["key_id"] == created.key.id and answered["key_name"] == "ci"
    assert (answered["model"], answered["backend"], answered["status"]) == ("t", "tiny", 200)
    assert (answered["prompt_tokens"], answered["completion_tokens"]) == (3, 2)
    assert answered["prompt_sha256"] == prompt_sha256(messages) and answered["prompt"] == messages
    assert answered["time"].endswith("Z")  # unix time in the event, ISO 8601 in the log
    assert answered["client"] == "127.0.0.1:5000" and answered["latency_ms"] >= 0


async def test_a_node_takes_the_fleet_node_key_for_inference_only(
    db: Database, tmp_path: Path
) -> None:
    settings = SecuritySettings.model_validate({"audit": {"enabled": False}})
    guard = build_guard(settings, resolve, db, node_key=SecretStr("fleet-secret"))
    await guard.start()
    assert guard.auth_on  # a node key set: nothing gets in without a key
    with pytest.raises(AuthError, match="missing API key"):
        await ask(guard)
    with pytest.raises(AuthError):
        await ask(guard, "fleet-secre")
    ctx = await ask(guard, "fleet-secret", headers={"x-session-id": "conv-7"})
    assert ctx.key is not None and ctx.key.id == "fleet" and not ctx.admin
    assert ctx.session == "conv-7"
    await guard.admit(ctx, "chat", {"model": "t", "messages": []})  # every model
    with pytest.raises(PermissionDenied, match="needs an admin key"):
        await ask(guard, "fleet-secret", "/admin/keys", method="GET")
    await guard.close()


@pytest.mark.parametrize("what", ["rpm", "tpm"])
@pytest.mark.parametrize("value", [0, MAX_LIMIT + 1, 2**63])
async def test_limits_outside_what_the_database_holds_are_refused(
    store: KeyStore, what: str, value: int
) -> None:
    with pytest.raises(InvalidRequest, match=f"{what} must be from 1 to {MAX_LIMIT}"):
        await store.create("k", **{what: value})  # type: ignore[arg-type]


async def test_the_largest_limit_is_stored(store: KeyStore) -> None:
    made = await store.create("k", rpm=MAX_LIMIT, tpm=MAX_LIMIT)
    key = await store.verify(made.secret, time.time())
    assert (key.rpm, key.tpm) == (MAX_LIMIT, MAX_LIMIT)
