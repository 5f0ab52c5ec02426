"""Conversations kept across a model swap, with llama.cpp's slot save and restore.

While an engine runs, each conversation (`wire.openai.conversation_key`) is sent to one slot
(`id_slot`), so we know which slot holds whose KV cache. Before the engine stops, the slots that
hold a conversation are saved (`POST /slots/{id}?action=save`, written by the engine into the
model's folder, `slot_files.py`). When a conversation returns to a fresh engine, its saved slot
is restored into a free slot first (`?action=restore`) and the request sent to that slot: the
engine then re-processes only what the prompt adds (`cache_prompt`, llama.cpp's default).

Failures to save or restore are logged, never a request's failure: the engine then processes the
whole prompt, as without this.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from ml_offload.backends.http import Upstream
from ml_offload.backends.slot_files import SlotBounds, SlotFiles
from ml_offload.domain import DeploymentKind, ModelSpec
from ml_offload.errors import MloError
from ml_offload.wire.openai import conversation_key

log = logging.getLogger(__name__)

SAVE_TIMEOUT_S = 30.0  # all of an engine's slots, before it stops anyway
RESTORE_TIMEOUT_S = 10.0


class SlotKeeper:
    """One model's conversations in its engine's slots: which slot holds which conversation
    (for the engine at one address), which slots requests use now."""

    def __init__(self, spec: ModelSpec, files: SlotFiles, upstream: Upstream) -> None:
        self.spec = spec
        self.files = files
        self._upstream = upstream
        self._url: str | None = None  # the engine the state below is about
        self._held: dict[str, int] = {}  # conversation key → the slot holding its cache
        self._busy: set[int] = set()
        self._used: dict[int, int] = {}  # slot → when last pinned (a tick)
        self._tick = itertools.count()

    async def pin(self, base_url: str, key: str) -> int | None:
        """The slot to send conversation `key`'s request to (restored from its saved slot when
        the engine does not hold it), now busy until `unpin`; None: send it anywhere."""
        self._follow(base_url)
        slot = self._held.get(key)
        restore = slot is None
        if slot is None:
            slot = self._free_slot()
        if slot is None or slot in self._busy:
            return None  # every slot busy, or this conversation runs already
        self._take(slot, key)
        name = self.files.saved(key) if restore else None
        if name is not None:
            try:
                await self._restore(base_url, slot, name)
            except BaseException:  # cancelled: the caller will not unpin
                self.unpin(slot)
                raise
        return slot

    def unpin(self, slot: int) -> None:
        self._busy.discard(slot)

    async def save(self, base_url: str) -> None:
        """Save each slot that holds a conversation (the engine is about to stop)."""
        if base_url != self._url or not self._held:
            return
        held, self._held = self._held, {}
        try:
            async with asyncio.timeout(SAVE_TIMEOUT_S):
                for key, slot in held.items():
                    await self._save(base_url, slot, key)
        except TimeoutError:
            log.warning("model %s: saving slots took over %.0fs", self.spec.name, SAVE_TIMEOUT_S)
        self.files.prune()

    def _follow(self, base_url: str) -> None:
        """A new engine (restarted, or replaced after a crash) holds nothing yet."""
        if base_url != self._url:
            self._url, self._held, self._busy, self._used = base_url, {}, set(), {}

    def _free_slot(self) -> int | None:
        """A slot no request uses: one holding no conversation, else the least recently used."""
        free = [s for s in range(self.spec.parallel) if s not in self._busy]
        if not free:
            return None
        holding = set(self._held.values())
        return min(free, key=lambda s: (s in holding, self._used.get(s, -1)))

    def _take(self, slot: int, key: str) -> None:
        for other in [k for k, s in self._held.items() if s == slot and k != key]:
            del self._held[other]  # its cache is about to be overwritten
        self._held[key] = slot
        self._busy.add(slot)
        self._used[slot] = next(self._tick)

    async def _save(self, base_url: str, slot: int, key: str) -> None:
        name = self.files.name(key)
        answer = await self._action(base_url, slot, "save", name)
        if answer is not None:
            log.info(
                "model %s: saved slot %d (%s tokens) as %s in %s ms",
                self.spec.name,
                slot,
                answer.get("n_saved"),
                name,
                (answer.get("timings") or {}).get("save_ms"),
            )

    async def _restore(self, base_url: str, slot: int, name: str) -> None:
        try:
            async with asyncio.timeout(RESTORE_TIMEOUT_S):
                answer = await self._action(base_url, slot, "restore", name)
        except TimeoutError:
            answer = None
            log.warning("model %s: restoring slot %d timed out", self.spec.name, slot)
        if answer is None:
            self.files.remove(name)  # unusable here; the next save writes a new one
            return
        log.info(
            "model %s: restored %s tokens into slot %d from %s in %s ms",
            self.spec.name,
            answer.get("n_restored"),
            slot,
            name,
            (answer.get("timings") or {}).get("restore_ms"),
        )

    async def _action(self, base_url: str, slot: int, action: str, name: str) -> Any:
        """The engine's answer to a slot action, or None (logged) when it failed."""
        url = f"{base_url}/slots/{slot}?action={action}"
        try:
            status, raw = await self._upstream.post(url, orjson.dumps({"filename": name}))
        except MloError as exc:
            log.warning("model %s: slot %s failed: %s", self.spec.name, action, exc.message)
            return None
        if status != 200:
            text = raw[:300].decode(errors="replace")
            log.warning("model %s: slot %s answered %d: %s", self.spec.name, action, status, text)
            return None
        return orjson.loads(raw)


class ConversationSlots:
    """Every llama.cpp model's `SlotKeeper` (the process factory makes them; the inference
    service pins requests through them). Off (`enabled` False): no keeper, nothing pinned."""

    def __init__(self, root: Path, bounds: SlotBounds, upstream: Upstream, enabled: bool) -> None:
        self._root = root
        self._bounds = bounds
        self._upstream = upstream
        self.enabled = enabled
        self._keepers: dict[str, SlotKeeper] = {}

    def keeper(self, spec: ModelSpec) -> SlotKeeper | None:
        """A new keeper for the engine about to run `spec` (replacing the spec's earlier one);
        None when slots are not kept."""
        if not self.enabled or spec.kind is not DeploymentKind.LLAMACPP:
            return None
        keeper = SlotKeeper(spec, SlotFiles(self._root, spec, self._bounds), self._upstream)
        keeper.files.folder.mkdir(parents=True, exist_ok=True)
        self._keepers[spec.name] = keeper
        return keeper

    def key(self, spec: ModelSpec, data: dict[str, Any], header: str | None) -> str | None:
        """The conversation chat request `data` continues (`header`: its `x-session-id`), when
        `spec`'s engine keeps slots (and the caller did not choose a slot itself)."""
        if not self.enabled or spec.kind is not DeploymentKind.LLAMACPP or "id_slot" in data:
            return None
        return conversation_key(data, header)

    @contextlib.asynccontextmanager
    async def pinned(
        self, spec: ModelSpec, base_url: str, key: str | None, request: bytes
    ) -> AsyncIterator[bytes]:
        """`request` sent to the slot that holds (or is restored with) conversation `key`; the
        slot is free again when the block ends."""
        keeper = self._keepers.get(spec.name)
        slot = None if keeper is None or key is None else await keeper.pin(base_url, key)
        if keeper is None or slot is None:
            yield request
            return
        try:
            yield with_slot(request, slot)
        finally:
            keeper.unpin(slot)


def with_slot(request: bytes, slot: int) -> bytes:
    """The JSON object `request` (as orjson writes it: compact, ending in `}`) with `id_slot`
    added, without decoding it again."""
    return request[:-1] + b',"id_slot":' + str(slot).encode() + b"}"
