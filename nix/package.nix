# The ml-offload Python application, built from this repository with nixpkgs' Python packaging.
# xllamacpp (prebuilt llama.cpp wheels) is not in nixpkgs: the NixOS module runs models with
# nixpkgs' llama-server instead (services.ml-offload.engineBinary, set by the flake's module).
{
  lib,
  python3Packages,
}:
let
  py = python3Packages;
in
py.buildPythonApplication {
  pname = "ml-offload";
  version = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project.version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../pyproject.toml
      ../README.md
      ../src
    ];
  };

  build-system = [ py.setuptools ];

  dependencies =
    with py;
    [
      fastapi
      aiohttp
      orjson
      pydantic
      pydantic-settings
      typer
      rich
      httpx
      sqlalchemy
      alembic
      aiosqlite
      gguf
      prometheus-client
      huggingface-hub
      limits
      watchfiles
      cryptography
      mcp
      tree-sitter
      redis
      asyncpg
      nvidia-ml-py
    ]
    ++ uvicorn.optional-dependencies.standard
    ++ [ uvicorn ];

  # xllamacpp: the module runs nixpkgs' llama-server instead; the language pack (for
  # `mlo analyze`) ships prebuilt grammars that nixpkgs does not package.
  pythonRemoveDeps = [ "xllamacpp" "tree-sitter-language-pack" ];
  pythonRelaxDeps = true;
  pythonImportsCheck = [ "ml_offload" ];
  doCheck = false; # the test suite runs real engines and services: `make test` in the dev shell

  meta = {
    description = "Self-hosted LLM gateway and GPU-aware model orchestrator";
    license = lib.licenses.mit;
    mainProgram = "mlo";
    platforms = lib.platforms.linux;
  };
}
