"""Routing across the fleet: a gateway (`fleet.role = gateway`) answers a request for model M
from the alive nodes that serve M, each one a remote OpenAI-compatible deployment (the node's
URL, M as its upstream model, `fleet.node_key` as its key), so the router's fallback moves to the
next node when one fails before the answer starts; a node that cannot be reached at all is
skipped for every model until it beats again.

The order (`rank_nodes`, pure): warm first (M loaded there, shortest queue), then the nodes whose
free memory fits M's estimate, best fit first (the least room left over), then every other node
that serves M (most room first). A request's conversation (`wire.openai.session_of`) goes,
within each tier, to the node that rendezvous hashing picks for it: the same node from every
gateway while that node stays in the tier, with no shared state. The fleet view is re-read from
the database every `fleet.refresh_s` in the background (`FleetRoutes`), never per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from collections.abc import Callable

from pydantic import SecretStr

from ml_offload.config import FleetSettings
from ml_offload.domain import FLEET_SOURCE, DeploymentKind, ModelSpec, NodeBeat, ServedModel
from ml_offload.errors import ConfigError, MloError, Unavailable
from ml_offload.storage.nodes_repo import NodeRepository

log = logging.getLogger(__name__)


def _weight(session: str, node: str) -> int:
    """Rendezvous (highest random weight) hashing: each node's weight for this session."""
    digest = hashlib.blake2b(f"{session}\0{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _room_bytes(beat: NodeBeat) -> int:
    """What a node has free for a new model: its GPUs' free memory, else its host's."""
    return sum(d.free_bytes for d in beat.devices) or beat.host_free_bytes


def rank_nodes(
    beats: list[NodeBeat], model: str, *, now: float, session: str | None = None
) -> list[NodeBeat]:
    """The alive nodes that serve `model` (a name or alias), best first (see the module)."""
    serving = [(b, m) for b in beats if b.url and b.alive(now) and (m := b.serving(model))]
    warm = [(b, m) for b, m in serving if m.name in b.loaded]
    cold = [(b, m) for b, m in serving if m.name not in b.loaded]
    fits = [(b, m) for b, m in cold if m.estimate_bytes <= _room_bytes(b)]
    rest = [(b, m) for b, m in cold if m.estimate_bytes > _room_bytes(b)]

    def tie(b: NodeBeat) -> tuple[int, str]:
        return (-_weight(session, b.name) if session else 0, b.name)

    if session:  # the session's node, while it stays warm: its conversation's cache is there
        warm.sort(key=lambda p: tie(p[0]))
    else:
        warm.sort(key=lambda p: (p[0].queue_depth, p[0].name))
    fits.sort(key=lambda p: (_room_bytes(p[0]) - p[1].estimate_bytes, *tie(p[0])))
    rest.sort(key=lambda p: (-_room_bytes(p[0]), *tie(p[0])))
    return [b for b, _ in (*warm, *fits, *rest)]


def node_deployment(beat: NodeBeat, served: ServedModel, key: SecretStr | None) -> ModelSpec:
    """Node `beat`'s `served` model as a deployment: `<model>@<node>`, reached at the node's
    URL with the node key; the model's own names as aliases (key scopes name the model)."""
    assert beat.url is not None
    return ModelSpec(
        name=f"{served.name}@{beat.name}",
        kind=DeploymentKind.REMOTE,
        url=beat.url,
        aliases=served.names,
        remote_model=served.name,
        source=FLEET_SOURCE,
        api_key=key,
    )


def gone_reason(beats: list[NodeBeat], model: str, now: float) -> str | None:
    """Why no node answers `model` when nodes that serve it are known but gone; None when no
    node ever served it."""
    gone = [b for b in beats if b.serving(model)]
    if not gone:
        return None
    said = ", ".join(f"{b.name} (last heard {max(0.0, now - b.beat_at):.0f} s ago)" for b in gone)
    return f"every node that serves {model!r} is gone: {said}; start one or wait for it"


def node_tls(fleet: FleetSettings) -> ssl.SSLContext | None:
    """How a gateway reaches nodes over TLS: trusting `fleet.tls_ca_file` (else the system's
    store) and presenting `fleet.tls_cert_file` for mutual TLS; None when neither is set."""
    if fleet.tls_ca_file is None and fleet.tls_cert_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=fleet.tls_ca_file)
        if fleet.tls_cert_file is not None:
            context.load_cert_chain(fleet.tls_cert_file, fleet.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"fleet.tls_ca_file / tls_cert_file / tls_key_file: {exc}; give PEM files (a CA "
            "bundle, a certificate and its private key)"
        ) from None
    return context


class FleetRoutes:
    """A gateway's view of the fleet, re-read every `refresh_s`; the deployments for a model."""

    def __init__(
        self,
        repo: NodeRepository,
        *,
        refresh_s: float,
        node_key: SecretStr | None,
        on_node: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`on_node`: called with each node URL before the first request to it (its TLS)."""
        self._repo, self._refresh_s, self._key, self._clock = repo, refresh_s, node_key, clock
        self._on_node = on_node
        self._beats: list[NodeBeat] = []
        self._specs: dict[tuple[str, str, str], ModelSpec] = {}  # (node, model, url)
        self._node_of: dict[str, str] = {}  # a deployment's name -> its node's
        self._refused: dict[str, float] = {}  # node -> its beat_at when it could not be reached
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()  # routes known before the first request
        self._task = asyncio.create_task(self._run(), name="fleet-routes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        try:
            self._beats = [b for b in await self._repo.all() if b.role == "node"]
        except MloError as exc:  # the database away: keep routing on the last view
            log.warning("fleet: could not read the nodes: %s", exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    def candidates(self, model: str, session: str | None = None) -> list[ModelSpec] | None:
        """The deployments for `model` on the alive nodes, best first; None when no node
        serves it (the gateway's own registry decides); Unavailable when all those are gone."""
        now = self._clock()
        ranked = rank_nodes(self._beats, model, now=now, session=session)
        ranked = [b for b in ranked if self._refused.get(b.name) != b.beat_at] or ranked
        if not ranked:
            reason = gone_reason(self._beats, model, now)
            if reason is None:
                return None
            raise Unavailable(reason, retry_after_s=1)
        return [self._spec(b, model) for b in ranked]

    def _spec(self, beat: NodeBeat, model: str) -> ModelSpec:
        served = beat.serving(model)
        assert served is not None and beat.url is not None
        key = (beat.name, served.name, beat.url)
        spec = self._specs.get(key)
        if spec is None:
            if self._on_node is not None:
                self._on_node(beat.url)
            spec = self._specs[key] = node_deployment(beat, served, self._key)
            self._node_of[spec.name] = beat.name
        return spec

    def unreachable(self, spec: ModelSpec) -> None:
        """`spec`'s node could not be reached: it is skipped for every model (unless no other
        node serves it) until it beats again, or its lease ends."""
        node = self._node_of.get(spec.name)
        beat = next((b for b in self._beats if b.name == node), None)
        if beat is not None:
            self._refused[beat.name] = beat.beat_at

    def models(self) -> list[tuple[ServedModel, bool]]:
        """The models the alive nodes serve, once each by name (sorted), and whether each is
        loaded on one of them."""
        now = self._clock()
        out: dict[str, tuple[ServedModel, bool]] = {}
        for b in self._beats:
            if b.url and b.alive(now):
                for m in b.served:
                    warm = m.name in b.loaded or out.get(m.name, (m, False))[1]
                    out[m.name] = (out.get(m.name, (m, False))[0], warm)
        return [out[name] for name in sorted(out)]
