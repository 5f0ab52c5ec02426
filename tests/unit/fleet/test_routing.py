"""Routing across the fleet: the node order (warm, then best fit, then room), sticky sessions,
the nodes as deployments, and the gateway's view of them (fleet/routing.py)."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from ml_offload.config import FleetSettings
from ml_offload.domain import (
    DeploymentKind,
    ModelSpec,
    ModelState,
    NodeBeat,
    NodeDevice,
    ServedModel,
)
from ml_offload.errors import (
    ConfigError,
    EngineError,
    EngineUnreachable,
    ModelNotFound,
    Unavailable,
)
from ml_offload.fleet.routing import FleetRoutes, node_deployment, node_tls, rank_nodes
from ml_offload.router import Router
from ml_offload.security.keys import in_scope, provider_of

GIB = 2**30
NOW = 1000.0


def beat(
    name: str,
    *,
    loaded: tuple[str, ...] = (),
    queue: int = 0,
    free_gib: float = 8,
    served: tuple[ServedModel, ...] = (ServedModel("m", ("alias-m",), 2 * GIB),),
    beat_at: float = NOW,
    url: str | None = "auto",
) -> NodeBeat:
    return NodeBeat(
        name=name,
        role="node",
        devices=(NodeDevice(0, "Sim", 24 * GIB, int(free_gib * GIB)),),
        loaded=loaded,
        host_free_bytes=4 * GIB,
        queue_depth=queue,
        started_at=0.0,
        beat_at=beat_at,
        lease_s=10.0,
        url=f"http://{name}:9000" if url == "auto" else url,
        served=served,
    )


def names(beats: list[NodeBeat]) -> list[str]:
    return [b.name for b in beats]


def test_warm_nodes_first_shortest_queue_first() -> None:
    beats = [beat("a"), beat("b", loaded=("m",), queue=3), beat("c", loaded=("m",), queue=1)]
    assert names(rank_nodes(beats, "m", now=NOW)) == ["c", "b", "a"]


def test_cold_model_goes_where_it_fits_best_then_where_room_is_largest() -> None:
    beats = [beat("roomy", free_gib=20), beat("snug", free_gib=2.5), beat("full", free_gib=1)]
    # the least room left over among those it fits, then the rest by most room
    assert names(rank_nodes(beats, "m", now=NOW)) == ["snug", "roomy", "full"]
    small = [beat("tiny", free_gib=0.5), beat("less", free_gib=0.1)]
    assert names(rank_nodes(small, "m", now=NOW)) == ["tiny", "less"]


def test_only_alive_nodes_with_an_address_that_serve_the_model() -> None:
    other = (ServedModel("other"),)
    beats = [
        beat("gone", loaded=("m",), beat_at=NOW - 11),
        beat("nowhere", url=None),
        beat("elsewhere", served=other),
        beat("ok"),
    ]
    assert names(rank_nodes(beats, "m", now=NOW)) == ["ok"]
    assert names(rank_nodes(beats, "alias-m", now=NOW)) == ["ok"]  # by alias too
    assert rank_nodes(beats, "unknown", now=NOW) == []


def test_a_session_stays_on_one_node_whatever_the_queues() -> None:
    beats = [beat(n, loaded=("m",), queue=q) for n, q in (("a", 0), ("b", 5), ("c", 2))]
    first = rank_nodes(beats, "m", now=NOW, session="conv-1")[0].name
    for _ in range(20):
        shuffled = [replace(b, queue_depth=random.randint(0, 9)) for b in beats]
        random.shuffle(shuffled)
        assert rank_nodes(shuffled, "m", now=NOW, session="conv-1")[0].name == first


def test_sessions_spread_over_the_warm_nodes_and_skip_a_gone_one() -> None:
    beats = [beat("a", loaded=("m",)), beat("b", loaded=("m",))]
    chosen = [rank_nodes(beats, "m", now=NOW, session=f"s{i}")[0].name for i in range(64)]
    assert set(chosen) == {"a", "b"}
    on_a = [f"s{i}" for i, n in enumerate(chosen) if n == "a"]
    without_a = [beat("a", loaded=("m",), beat_at=NOW - 60), beats[1]]
    assert {rank_nodes(without_a, "m", now=NOW, session=s)[0].name for s in on_a} == {"b"}


def test_a_session_prefers_a_warm_node_to_a_cold_one() -> None:
    beats = [beat("cold", free_gib=20), beat("warm", loaded=("m",), queue=9)]
    for i in range(16):
        assert rank_nodes(beats, "m", now=NOW, session=f"s{i}")[0].name == "warm"


def test_a_node_as_a_deployment() -> None:
    key = SecretStr("node-secret")
    spec = node_deployment(beat("gpu1"), ServedModel("m", ("alias-m",)), key)
    assert spec.name == "m@gpu1"
    assert spec.kind is DeploymentKind.REMOTE and spec.backend == "openai"
    assert spec.url == "http://gpu1:9000"
    assert spec.upstream_model == "m"
    assert spec.names == ("m@gpu1", "m", "alias-m")  # a key scoped to "m" may use it
    assert spec.api_key is key


class FakeNodes:
    """The nodes table, as `NodeRepository.all` reads it."""

    def __init__(self, beats: list[NodeBeat]) -> None:
        self.beats = beats
        self.fail = False

    async def all(self) -> list[NodeBeat]:
        if self.fail:
            raise Unavailable("database down")
        return self.beats


async def routes(beats: list[NodeBeat], now: float = NOW) -> tuple[FleetRoutes, FakeNodes]:
    repo = FakeNodes(beats)
    fleet = FleetRoutes(repo, refresh_s=1.0, node_key=SecretStr("k"), clock=lambda: now)  # type: ignore[arg-type]
    await fleet.refresh()
    return fleet, repo


async def test_routes_give_node_deployments_in_order_and_reuse_them() -> None:
    fleet, _ = await routes([beat("a"), beat("b", loaded=("m",))])
    specs = fleet.candidates("m")
    assert specs is not None and [s.name for s in specs] == ["m@b", "m@a"]
    assert fleet.candidates("m") == specs and fleet.candidates("m")[0] is specs[0]  # type: ignore[index]
    assert fleet.candidates("unknown") is None  # the gateway's own registry decides


async def test_routes_say_which_nodes_are_gone() -> None:
    fleet, _ = await routes([beat("a", beat_at=NOW - 30)])
    with pytest.raises(
        Unavailable, match=r"every node that serves 'm' is gone: a \(last heard 30 s"
    ):
        fleet.candidates("m")


async def test_routes_keep_the_last_view_when_the_database_is_away() -> None:
    fleet, repo = await routes([beat("a")])
    repo.fail = True
    await fleet.refresh()
    assert [s.name for s in fleet.candidates("m") or []] == ["m@a"]


async def test_gateways_are_not_routed_to_and_models_are_listed_once() -> None:
    gw = replace(beat("gw", loaded=("m",)), role="gateway")
    two = (ServedModel("m", (), GIB), ServedModel("n"))
    fleet, _ = await routes([gw, beat("a", served=two), beat("b", loaded=("m",))])
    assert [s.name for s in fleet.candidates("m") or []] == ["m@b", "m@a"]
    assert [(m.name, warm) for m, warm in fleet.models()] == [("m", True), ("n", False)]


def unknown(name: str) -> ModelSpec:
    raise ModelNotFound(f"model {name!r} not found")


async def test_router_skips_a_node_that_just_failed() -> None:
    fleet, _ = await routes([beat("a", loaded=("m",)), beat("b")])

    router = Router(unknown, lambda s: ModelState.READY, cooldown_s=30, fleet=fleet)
    first = router.candidates("m")
    assert [s.name for s in first] == ["m@a", "m@b"]
    router.failed(first[0], EngineUnreachable("connection refused"))
    assert [s.name for s in router.candidates("m")] == ["m@b"]
    with pytest.raises(ModelNotFound):
        router.candidates("unknown")


async def test_a_conversation_goes_back_to_the_node_that_answered_it() -> None:
    fleet, repo = await routes([beat("a", loaded=("m",), queue=5), beat("b", loaded=("m",))])
    router = Router(unknown, lambda s: ModelState.READY, cooldown_s=30, fleet=fleet)
    first = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    specs, session = router.route(first)
    assert [s.name for s in specs] == ["m@b", "m@a"]  # no id: the shortest queue
    assert session is not None
    router.succeeded(specs[0], session)
    repo.beats = [beat("a", loaded=("m",)), beat("b", loaded=("m",), queue=5)]
    await fleet.refresh()
    assert [s.name for s in router.route(first)[0]] == ["m@a", "m@b"]  # a new one: not steered
    later = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "yo"}]}
    later["messages"].append({"role": "user", "content": "more"})
    assert [s.name for s in router.route(later)[0]] == ["m@b", "m@a"]  # back where it was
    named = [router.route({**first, "user": "u7"})[0][0].name for _ in range(3)]
    assert len(set(named)) == 1  # a named session: the node rendezvous hashing picks for it
    assert named[0] == "m@" + rank_nodes(repo.beats, "m", now=NOW, session="user:u7")[0].name


def test_node_tls_from_the_fleet_settings(tmp_path: Path) -> None:
    assert node_tls(FleetSettings()) is None
    with pytest.raises(ValidationError, match=r"tls_cert_file and fleet\.tls_key_file"):
        FleetSettings(tls_cert_file=tmp_path / "c.pem")
    with pytest.raises(ConfigError, match=r"fleet\.tls_ca_file"):
        node_tls(FleetSettings(tls_ca_file=tmp_path / "missing.pem"))


async def test_each_new_node_url_is_announced_once_for_its_tls() -> None:
    seen: list[str] = []
    repo = FakeNodes([beat("a"), beat("b")])
    fleet = FleetRoutes(repo, refresh_s=1, node_key=None, on_node=seen.append, clock=lambda: NOW)  # type: ignore[arg-type]
    await fleet.refresh()
    fleet.candidates("m")
    fleet.candidates("alias-m")
    assert sorted(seen) == ["http://a:9000", "http://b:9000"]


async def test_a_node_that_cannot_be_reached_is_skipped_for_every_model_until_it_beats() -> None:
    two = (ServedModel("m"), ServedModel("n"))
    fleet, repo = await routes([beat("a", loaded=("m", "n"), served=two), beat("b", served=two)])
    router = Router(unknown, lambda s: ModelState.READY, cooldown_s=30, fleet=fleet)
    on_a = router.candidates("m")[0]
    router.failed(on_a, EngineError("engine error 500: boom", upstream=True))
    assert [s.name for s in router.candidates("n")] == ["n@a", "n@b"]  # it answered: alive
    router.failed(on_a, EngineUnreachable("connection refused"))
    assert [s.name for s in router.candidates("n")] == ["n@b"]  # refused: the whole node
    repo.beats = [beat("a", served=(ServedModel("x"),)), beat("b", served=two)]
    await fleet.refresh()  # no beat since, but a model only a serves is tried there anyway
    assert [s.name for s in router.candidates("x")] == ["x@a"]
    repo.beats = [beat("a", loaded=("n",), served=two, beat_at=NOW + 1), beat("b", served=two)]
    await fleet.refresh()  # a beat since: back
    assert [s.name for s in router.candidates("n")] == ["n@a", "n@b"]


def test_a_fleet_node_is_our_own_engine_to_key_scopes() -> None:
    spec = node_deployment(beat("gpu1"), ServedModel("m"), None)
    assert spec.on_fleet_node and provider_of(spec) == "local"
    assert in_scope(["local:*"], "m", spec) and not in_scope(["openai:*"], "m", spec)
    assert not spec.redact  # its prompts stay within the fleet
