"""Pure eviction and idle decisions, including hypothesis properties."""

from hypothesis import given
from hypothesis import strategies as st

from ml_offload.placement import LoadedView, idle_expired, plan_room

GIB = 2**30


def view(
    name: str,
    gib: float = 1,
    busy: bool = False,
    pinned: bool = False,
    used: float = 0,
    ttl: float = 300,
) -> LoadedView:
    return LoadedView(name, int(gib * GIB), busy, pinned, used, ttl)


def test_fits_without_eviction() -> None:
    plan = plan_room([view("a")], need_bytes=GIB, budget_bytes=4 * GIB, max_loaded=2)
    assert plan.evict == () and plan.refused is None


def test_evicts_least_recently_used_idle_model_at_the_cap() -> None:
    loaded = [view("old", used=1), view("new", used=5), view("mid", used=3)]
    plan = plan_room(loaded, need_bytes=GIB, budget_bytes=100 * GIB, max_loaded=3)
    assert plan.evict == ("old",)


def test_evicts_enough_for_memory() -> None:
    loaded = [view("a", 2, used=1), view("b", 2, used=2), view("c", 2, used=3)]
    plan = plan_room(loaded, need_bytes=3 * GIB, budget_bytes=6 * GIB, max_loaded=10)
    assert plan.evict == ("a", "b")


def test_never_evicts_pinned_or_busy() -> None:
    loaded = [view("p", pinned=True, used=0), view("b", busy=True, used=1), view("i", used=2)]
    plan = plan_room(loaded, need_bytes=GIB, budget_bytes=100 * GIB, max_loaded=3)
    assert plan.evict == ("i",)


def test_waits_when_only_busy_models_could_make_room() -> None:
    plan = plan_room([view("b", busy=True)], need_bytes=GIB, budget_bytes=100, max_loaded=1)
    assert plan.refused and not plan.evict


def test_refuses_a_model_larger_than_the_budget() -> None:
    plan = plan_room([], need_bytes=10 * GIB, budget_bytes=4 * GIB, max_loaded=4)
    assert plan.refused is not None and "budget" in plan.refused and not plan.wait


def test_refuses_when_everything_is_pinned() -> None:
    plan = plan_room([view("p", pinned=True)], need_bytes=GIB, budget_bytes=100 * GIB, max_loaded=1)
    assert plan.refused and not plan.wait


def test_idle_expired_respects_ttl_busy_pins_and_zero_ttl() -> None:
    loaded = [
        view("old", used=0, ttl=10),
        view("fresh", used=95, ttl=10),
        view("busy", used=0, busy=True, ttl=10),
        view("pinned", used=0, pinned=True, ttl=10),
        view("forever", used=0, ttl=0),
    ]
    assert idle_expired(loaded, now=100) == ["old"]


views = st.builds(
    LoadedView,
    name=st.uuids().map(str),
    estimate_bytes=st.integers(0, 64 * GIB),
    busy=st.booleans(),
    pinned=st.booleans(),
    last_used=st.floats(0, 1e6),
    ttl_s=st.floats(0, 1e4),
)


@given(
    st.lists(views, max_size=8),
    st.integers(0, 64 * GIB),
    st.integers(1, 128 * GIB),
    st.integers(1, 8),
)
def test_a_plan_that_admits_always_fits_and_spares_pinned_and_busy(
    loaded: list[LoadedView], need: int, budget: int, max_loaded: int
) -> None:
    plan = plan_room(loaded, need_bytes=need, budget_bytes=budget, max_loaded=max_loaded)
    by_name = {m.name: m for m in loaded}
    assert all(not by_name[n].pinned and not by_name[n].busy for n in plan.evict)
    if plan.refused is None:
        kept = [m for m in loaded if m.name not in plan.evict]
        assert len(kept) < max_loaded
        assert sum(m.estimate_bytes for m in kept) + need <= budget
