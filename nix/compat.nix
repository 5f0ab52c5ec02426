# The original stack's NixOS options, mapped onto services.ml-offload (docs/migration.md):
#   kernelcore.ml.offload.{enable,dataDir,modelsPath}    renamed options
#   kernelcore.ml.models-storage.{enable,baseDirectory}  the storage monitor and model folder
#   kernelcore.ml.mcp.{enable,knowledgeDbPath}           `mlo` on the PATH, the knowledge database
#   services.llamacpp.{enable,model,host,port,n_threads,n_gpu_layers,n_ctx}  a pinned model
#   services.ollama-gpu-manager.{enable,idleTimeout,unloadOnShellExit}       TTL, shell-exit hook
#   kernelcore.ml.offload.b200Optimized                 profile = "b200"
{ config, lib, ... }:
let
  inherit (lib)
    mkDefault
    mkIf
    mkMerge
    mkOption
    mkRenamedOptionModule
    types
    ;
  new = config.services.ml-offload;
  llamacpp = config.services.llamacpp;
  ollama = config.services.ollama-gpu-manager;
  mcp = config.kernelcore.ml.mcp;
  gateway = "http://${if new.host == "0.0.0.0" then "127.0.0.1" else new.host}:${toString new.port}";
in
{
  imports = [
    (mkRenamedOptionModule [ "kernelcore" "ml" "offload" "enable" ] [ "services" "ml-offload" "enable" ])
    (mkRenamedOptionModule [ "kernelcore" "ml" "offload" "dataDir" ] [ "services" "ml-offload" "dataDir" ])
    (mkRenamedOptionModule [ "kernelcore" "ml" "offload" "modelsPath" ] [ "services" "ml-offload" "modelsDir" ])
    (mkRenamedOptionModule [ "kernelcore" "ml" "models-storage" "enable" ] [ "services" "ml-offload" "storageMonitor" "enable" ])
    (mkRenamedOptionModule [ "kernelcore" "ml" "models-storage" "baseDirectory" ] [ "services" "ml-offload" "modelsDir" ])
  ];

  options = {
    kernelcore.ml.offload.b200Optimized = mkOption {
      type = types.bool;
      default = false;
      description = ''Alias of `services.ml-offload.settings.profile = "b200"`.'';
    };
    kernelcore.ml.mcp = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Put `mlo` (and its MCP server) on every user's PATH.";
      };
      knowledgeDbPath = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "The SQLite database of the knowledge base (storage.database_url).";
      };
    };
    services.llamacpp = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Serve `model` through ml-offload as the pinned model `llamacpp`.";
      };
      model = mkOption { type = types.str; description = "The GGUF file."; };
      host = mkOption { type = types.str; default = "127.0.0.1"; description = "Listen address (the gateway's, unless set there)."; };
      port = mkOption { type = types.port; default = 8080; description = "Listen port (the gateway's, unless set there)."; };
      n_threads = mkOption { type = types.nullOr types.ints.unsigned; default = null; description = "engine.threads"; };
      n_gpu_layers = mkOption { type = types.int; default = -1; description = "Layers on the GPU (-1: as many as fit)."; };
      n_ctx = mkOption { type = types.nullOr (types.ints.between 64 1048576); default = null; description = "Context size."; };
    };
    services.ollama-gpu-manager = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Ollama models behind ml-offload, unloaded when idle.";
      };
      idleTimeout = mkOption {
        type = types.ints.unsigned;
        default = 300;
        description = "Seconds before an idle model is unloaded (scheduler.default_ttl_s).";
      };
      unloadOnShellExit = mkOption {
        type = types.bool;
        default = false;
        description = "Unload every model when an interactive shell exits.";
      };
    };
  };

  config = mkMerge [
    (mkIf config.kernelcore.ml.offload.b200Optimized {
      services.ml-offload.settings.profile = "b200";
    })
    (mkIf llamacpp.enable {
      services.ml-offload = {
        enable = true;
        host = mkDefault llamacpp.host;
        port = mkDefault llamacpp.port;
        models.llamacpp = {
          path = llamacpp.model;
          pinned = true;
          max_gpu_layers = llamacpp.n_gpu_layers;
          ctx_size = llamacpp.n_ctx;
        };
        settings.engine.threads = mkIf (llamacpp.n_threads != null) llamacpp.n_threads;
      };
    })
    (mkIf ollama.enable {
      services.ml-offload = {
        enable = true;
        settings.scheduler.default_ttl_s = ollama.idleTimeout;
      };
      environment.interactiveShellInit = mkIf ollama.unloadOnShellExit ''
        # ml-offload (services.ollama-gpu-manager.unloadOnShellExit): give GPU memory back
        trap '${new.package}/bin/mlo unload --all --url ${gateway} >/dev/null 2>&1 || true' EXIT
      '';
    })
    (mkIf mcp.enable {
      services.ml-offload.enable = true;
      environment.systemPackages = [ new.package ];
    })
    (mkIf (mcp.knowledgeDbPath != null) {
      services.ml-offload = {
        settings.storage.database_url = "sqlite+aiosqlite:///${mcp.knowledgeDbPath}";
        extraWritablePaths = [ (builtins.dirOf mcp.knowledgeDbPath) ];
      };
    })
  ];
}
