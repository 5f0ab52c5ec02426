"""The analyzer's graph of each fixture repository equals the hand-checked one exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml_offload.analyzer import Analysis, Options, analyze

FIXTURES = Path(__file__).parents[2] / "fixtures" / "analyzer"

# Hand-checked from the fixture sources (see each file's imports).
EXPECTED: dict[str, dict[str, Any]] = {
    "python": {  # src/ layout, relative imports (`.`, `..`), a cycle through TYPE_CHECKING
        "edges": {
            ("src/shop/__init__.py", "src/shop/api.py"),
            ("src/shop/__main__.py", "src/shop/api.py"),
            ("src/shop/api.py", "src/shop/models.py"),  # from . import models
            ("src/shop/api.py", "src/shop/services/billing.py"),
            ("src/shop/db.py", "src/shop/models.py"),
            ("src/shop/models.py", "src/shop/db.py"),
            ("src/shop/services/billing.py", "src/shop/models.py"),  # from ..models
            ("tests/test_api.py", "src/shop/api.py"),
        },
        "cycles": [["src/shop/db.py", "src/shop/models.py"]],
        "dead": ["src/shop/legacy.py"],
        "external": {"requests": ["src/shop/api.py"]},  # json and typing: standard library
    },
    "rust": {  # a workspace of two crates, `mod` files, `super::`, a `pub use` re-export
        "edges": {
            ("app/src/main.rs", "app/src/cli.rs"),
            ("app/src/main.rs", "core/src/lib.rs"),  # use shop_core::Order (crate shop-core)
            ("core/src/lib.rs", "core/src/model.rs"),
            ("core/src/lib.rs", "core/src/store/mod.rs"),
            ("core/src/model.rs", "core/src/store/mod.rs"),
            ("core/src/store/mod.rs", "core/src/model.rs"),  # use super::model::Order
            ("core/src/store/mod.rs", "core/src/store/cache.rs"),
        },
        "cycles": [["core/src/model.rs", "core/src/store/mod.rs"]],
        "dead": ["core/src/orphan.rs"],  # no `mod orphan;` anywhere
        "external": {"clap": ["app/src/cli.rs"], "serde": ["core/src/model.rs"]},
    },
    "typescript": {  # tsconfig paths alias, re-exports, index files, require, `.js` for `.ts`
        "edges": {
            ("src/app.test.ts", "src/lib/greet.ts"),
            ("src/index.ts", "src/lib/format.ts"),  # export * from "./lib/format"
            ("src/index.ts", "src/lib/index.ts"),
            ("src/lib/format.ts", "src/lib/greet.ts"),
            ("src/lib/greet.ts", "src/config.ts"),
            ("src/lib/greet.ts", "src/lib/format.ts"),  # "@lib/format"
            ("src/lib/index.ts", "src/lib/greet.ts"),  # export { greet } from "./greet"
        },
        "cycles": [["src/lib/format.ts", "src/lib/greet.ts"]],
        "dead": ["src/old.js"],
        "external": {
            "@scope/pkg": ["src/config.ts"],
            "express": ["src/index.ts"],
            "lodash": ["src/lib/format.ts"],
        },
    },
    "nix": {  # import of a folder, callPackage, a module `imports` list, <nixpkgs>
        "edges": {
            ("flake.nix", "modules/default.nix"),
            ("flake.nix", "pkgs/hello/default.nix"),
            ("lib.nix", "lib-helpers.nix"),
            ("modules/default.nix", "modules/service.nix"),
            ("modules/default.nix", "modules/users.nix"),
            ("modules/service.nix", "pkgs/hello/default.nix"),
            ("modules/users.nix", "modules/service.nix"),
            ("pkgs/hello/default.nix", "lib.nix"),
        },
        "cycles": [],
        "dead": ["unused.nix"],
        "external": {"nixpkgs": ["shell.nix"]},
    },
}


@pytest.fixture(scope="module")
def analyses() -> dict[str, Analysis]:
    return {lang: analyze(FIXTURES / lang) for lang in EXPECTED}


@pytest.mark.parametrize("lang", sorted(EXPECTED))
def test_graph_equals_the_hand_checked_one(analyses: dict[str, Analysis], lang: str) -> None:
    a = analyses[lang]
    want = EXPECTED[lang]
    assert a.skipped == []
    assert {f.language for f in a.files} == {lang}
    assert set(a.graph.edges) == want["edges"]
    assert len(a.graph.edges) == len(want["edges"])
    assert a.graph.cycles == want["cycles"]
    assert a.graph.dead == want["dead"]
    assert a.external == want["external"]
    assert all(not f.unresolved for f in a.files)


def test_layers_are_longest_paths(analyses: dict[str, Analysis]) -> None:
    layer = analyses["nix"].graph.layer
    assert layer["lib-helpers.nix"] == 0
    assert layer["lib.nix"] == 1
    assert layer["modules/service.nix"] == 3
    assert layer["modules/users.nix"] == 4  # users -> service -> hello -> lib -> lib-helpers
    assert layer["flake.nix"] == 6
    py = analyses["python"].graph.layer
    assert py["src/shop/db.py"] == py["src/shop/models.py"] == 0  # one cycle, one layer


def test_fan_in_and_out(analyses: dict[str, Analysis]) -> None:
    g = analyses["python"].graph
    assert g.fan_in["src/shop/api.py"] == 3
    assert g.fan_out["src/shop/api.py"] == 2
    assert g.fan_in["src/shop/models.py"] == 3


def _symbols(a: Analysis, path: str) -> dict[str, tuple[str, int | None]]:
    facts = next(f for f in a.files if f.path == path)
    return {s.name: (s.kind, s.complexity) for s in facts.symbols}


def test_symbols_and_complexity(analyses: dict[str, Analysis]) -> None:
    py = _symbols(analyses["python"], "src/shop/api.py")
    # serve: for, if, `and`, elif -> 1 + 4
    assert py == {
        "serve": ("function", 5),
        "Handler": ("class", None),
        "Handler.get": ("method", 2),
    }
    rs = _symbols(analyses["rust"], "core/src/model.rs")
    assert rs["Order"] == ("struct", None)
    assert rs["Priced"] == ("trait", None)
    assert rs["Order.price"] == ("method", 5)  # if, &&, two match arms
    ts = _symbols(analyses["typescript"], "src/config.ts")
    assert ts["Config"] == ("interface", None)
    assert ts["Level"] == ("type", None)
    assert _symbols(analyses["typescript"], "src/lib/greet.ts")["greet"] == ("function", 4)
    nix = _symbols(analyses["nix"], "modules/service.nix")
    assert nix == {
        "services.shop.enable": ("option", None),
        "services.shop.port": ("option", None),
        "config": ("attribute", None),
    }
    assert _symbols(analyses["nix"], "lib-helpers.nix")["pure"] == ("function", 2)  # assert


def test_modules_and_import_kinds(analyses: dict[str, Analysis]) -> None:
    modules = {f.path: f.module for f in analyses["rust"].files}
    assert modules["core/src/store/mod.rs"] == "shop_core::store"
    assert modules["app/src/cli.rs"] == "app::cli"
    lib = next(f for f in analyses["rust"].files if f.path == "core/src/lib.rs")
    assert [(i.target, i.kind) for i in lib.imports] == [
        ("model", "mod"),
        ("store", "mod"),
        ("model::Order", "reexport"),
    ]
    py = {f.path: f.module for f in analyses["python"].files}
    assert py["src/shop/services/billing.py"] == "shop.services.billing"
    users = next(f for f in analyses["nix"].files if f.path == "modules/users.nix")
    assert [(i.target, i.kind) for i in users.imports] == [("./service.nix", "imports")]


def test_language_filter() -> None:
    a = analyze(FIXTURES, Options(languages=("nix",)))
    assert {f.language for f in a.files} == {"nix"}
    assert len(a.files) == 9
