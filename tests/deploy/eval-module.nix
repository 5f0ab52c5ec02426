# Evaluate the NixOS module with nixpkgs' real module system (lib.evalModules), declaring just
# the NixOS options it sets. Used by tests/deploy/test_nix.py:
#   nix-instantiate --eval --strict --json tests/deploy/eval-module.nix \
#     --arg lib 'import <nixpkgs-lib>/lib' --arg modules '[ ... ]'
{ lib, modules, module ? ../../nix/module.nix }:
let
  inherit (lib) mkOption types;
  freeform = types.submodule { freeformType = types.attrsOf types.anything; };
  nixos = {
    options = {
      systemd.services = mkOption { type = types.attrsOf freeform; default = { }; };
      systemd.timers = mkOption { type = types.attrsOf freeform; default = { }; };
      users.users = mkOption { type = types.attrsOf freeform; default = { }; };
      users.groups = mkOption { type = types.attrsOf freeform; default = { }; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule { options.text = mkOption { type = types.lines; }; });
        default = { };
      };
      environment.interactiveShellInit = mkOption { type = types.lines; default = ""; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };
  package = {
    type = "derivation";
    name = "ml-offload-0.1.0";
    outPath = "/nix/store/00000000000000000000000000000000-ml-offload-0.1.0";
  };
  eval = lib.evalModules {
    modules = [
      module
      ../../nix/compat.nix
      nixos
      {
        _module.args.pkgs.llama-cpp = {
          type = "derivation";
          name = "llama-cpp-6000";
          outPath = "/nix/store/11111111111111111111111111111111-llama-cpp-6000";
        };
        services.ml-offload.package = lib.mkDefault package;
      }
    ] ++ modules;
  };
  c = eval.config;
in
{
  config_toml = c.environment.etc."ml-offload/config.toml".text or null;
  services = c.systemd.services;
  timers = c.systemd.timers;
  users = c.users;
  firewall = c.networking.firewall.allowedTCPPorts;
  shell = c.environment.interactiveShellInit;
  packages = map (p: p.name) c.environment.systemPackages;
  warnings = c.warnings;
  enabled = c.services.ml-offload.enable;
}
