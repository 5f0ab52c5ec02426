# NixOS module: services.ml-offload, the gateway as a hardened systemd service, and the storage
# monitor timer. The original stack's options are accepted by ./compat.nix.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkDefault
    mkEnableOption
    mkIf
    mkOption
    optional
    optionalAttrs
    types
    ;
  cfg = config.services.ml-offload;
  options = import ./schema.nix { inherit lib; } (builtins.fromJSON (builtins.readFile ./settings-schema.json));
  toml = import ./toml.nix { inherit lib; };

  configPath = "/etc/ml-offload/config.toml";
  credentials = "/run/credentials/ml-offload.service";
  tlsFiles = lib.filterAttrs (_: f: f != null) {
    tls-cert = cfg.tls.certFile;
    tls-key = cfg.tls.keyFile;
    tls-client-ca = cfg.tls.clientCaFile;
  };
  mlo = "${cfg.package}/bin/mlo";
  rendered = toml.toTOML cfg.settings;
  environment = {
    MLO_CONFIG = configPath;
    HOME = cfg.dataDir;
    XDG_STATE_HOME = "${cfg.dataDir}/state";
    XDG_CACHE_HOME = "/var/cache/ml-offload";
  } // optionalAttrs cfg.gpu.enable {
    LD_LIBRARY_PATH = "/run/opengl-driver/lib"; # NixOS puts the NVIDIA driver's libraries here
  };
  nvidiaDevices = [
    "char-nvidiactl rw"
    "char-nvidia-frontend rw"
    "char-nvidia-uvm rw"
    "char-nvidia-caps r"
  ];
  writable = lib.unique ([ cfg.dataDir cfg.modelsDir ] ++ cfg.extraWritablePaths);
  pathOrNull = types.nullOr (types.either types.path types.str);
in
{
  options.services.ml-offload = {
    enable = mkEnableOption "the ml-offload LLM gateway";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The ml-offload package (the flake's `packages.default`).";
    };

    settings = mkOption {
      type = types.submodule { options = options.settings; };
      default = { };
      description = ''
        The gateway's config file (config.toml), as Nix. Every documented key is typed; keys
        left unset keep the gateway's default. Secrets go in `environmentFile`.
      '';
      example = lib.literalExpression ''{ profile = "h100"; scheduler.default_ttl_s = 600; }'';
    };

    models = mkOption {
      type = types.attrsOf (types.submodule { options = options.model; });
      default = { };
      description = "Models by name: a GGUF `path`, a server `url`, or `serve` (vLLM).";
      example = lib.literalExpression ''{ qwen = { path = "/srv/models/qwen2.5-7b-q4_k_m.gguf"; pinned = true; }; }'';
    };

    host = mkOption {
      type = types.str;
      default = "127.0.0.1";
      description = "Address to listen on (a non-loopback one needs a key: environmentFile).";
    };
    port = mkOption {
      type = types.port;
      default = 9000;
      description = "Port to listen on.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open `port` in the firewall.";
    };

    environmentFile = mkOption {
      type = pathOrNull;
      default = null;
      description = ''
        A file of KEY=value lines read by systemd, kept out of the Nix store: MLO_ADMIN_KEY,
        HF_TOKEN, cloud API keys (ANTHROPIC_API_KEY...), MLO_STORAGE__DATABASE_URL with a password.
      '';
    };

    tls = {
      certFile = mkOption { type = pathOrNull; default = null; description = "TLS certificate (PEM)."; };
      keyFile = mkOption {
        type = pathOrNull;
        default = null;
        description = "TLS private key; read by systemd (LoadCredential), so it may stay root-only.";
      };
      clientCaFile = mkOption {
        type = pathOrNull;
        default = null;
        description = "Mutual TLS: only clients with a certificate from this CA get in.";
      };
    };

    dataDir = mkOption {
      type = types.str;
      default = "/var/lib/ml-offload";
      description = "Registry database, logs, audit log (StateDirectory when under /var/lib).";
    };
    modelsDir = mkOption {
      type = types.str;
      default = "${cfg.dataDir}/models";
      defaultText = lib.literalExpression ''"''${config.services.ml-offload.dataDir}/models"'';
      description = "The model folder (every *.gguf in it is served).";
    };
    extraWritablePaths = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "More folders the sandboxed service may write (ProtectSystem=strict).";
    };

    gpu.enable = mkOption {
      type = types.bool;
      default = true;
      description = "Let the service open the NVIDIA devices (/dev/nvidia*), nothing else in /dev.";
    };

    engineBinary = mkOption {
      type = pathOrNull;
      default = "${pkgs.llama-cpp}/bin/llama-server";
      defaultText = lib.literalExpression ''"''${pkgs.llama-cpp}/bin/llama-server"'';
      example = lib.literalExpression ''"''${pkgs.llama-cpp.override { cudaSupport = true; }}/bin/llama-server"'';
      description = ''
        The llama-server binary that runs models (engine.kind = llama-server); null: the
        package's xllamacpp engine, where the package has it (nixpkgs has no xllamacpp).
      '';
    };

    user = mkOption { type = types.str; default = "ml-offload"; description = "Service user."; };
    group = mkOption { type = types.str; default = "ml-offload"; description = "Service group."; };

    storageMonitor = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "A timer that fails (and logs) when the model disk runs low.";
      };
      interval = mkOption {
        type = types.str;
        default = "15min";
        description = "How often the storage monitor runs (systemd time span).";
      };
    };
  };

  config = mkIf cfg.enable {
    services.ml-offload.settings = {
      server.host = mkDefault cfg.host;
      server.port = mkDefault cfg.port;
      storage.data_dir = mkDefault cfg.dataDir;
      storage.models_dir = mkDefault cfg.modelsDir;
      engine = mkIf (cfg.engineBinary != null) {
        kind = mkDefault "llama-server";
        llama_server_bin = mkDefault (toString cfg.engineBinary);
      };
      security.tls = lib.mapAttrs' (name: _: {
        name = builtins.replaceStrings [ "tls-" "-" ] [ "" "_" ] name + "_file";
        value = mkDefault "${credentials}/${name}";
      }) tlsFiles;
      models = lib.mapAttrsToList (name: m: toml.clean m // { inherit name; }) cfg.models;
    };

    environment.etc."ml-offload/config.toml".text = rendered;

    users.users = mkIf (cfg.user == "ml-offload") {
      ml-offload = {
        isSystemUser = true;
        group = cfg.group;
        home = cfg.dataDir;
        description = "ml-offload gateway";
      };
    };
    users.groups = mkIf (cfg.group == "ml-offload") { ml-offload = { }; };

    networking.firewall.allowedTCPPorts = optional cfg.openFirewall cfg.port;

    systemd.services.ml-offload = {
      description = "ml-offload LLM gateway and model orchestrator";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      restartTriggers = [ rendered ];
      inherit environment;
      serviceConfig =
        import ./hardening.nix
        // {
          Type = "exec";
          ExecStart = "${mlo} serve --config ${configPath}";
          Restart = "on-failure";
          RestartSec = "5s";
          TimeoutStopSec = "30s";
          KillMode = "control-group";
          User = cfg.user;
          Group = cfg.group;
          StateDirectory = "ml-offload";
          StateDirectoryMode = "0750";
          CacheDirectory = "ml-offload";
          LogsDirectory = "ml-offload";
          ReadWritePaths = writable;
          DeviceAllow = if cfg.gpu.enable then nvidiaDevices else [ ];
          LoadCredential = lib.mapAttrsToList (name: file: "${name}:${toString file}") tlsFiles;
        }
        // optionalAttrs (cfg.environmentFile != null) {
          EnvironmentFile = toString cfg.environmentFile;
        };
    };

    systemd.services.ml-storage-monitor = mkIf cfg.storageMonitor.enable {
      description = "ml-offload model storage check";
      environment = { MLO_CONFIG = configPath; HOME = cfg.dataDir; };
      serviceConfig = import ./hardening.nix // {
        Type = "oneshot";
        ExecStart = "${mlo} du --check --config ${configPath}";
        User = cfg.user;
        Group = cfg.group;
        StateDirectory = "ml-offload";
        PrivateNetwork = true;
        PrivateDevices = true;
        RestrictAddressFamilies = [ "AF_UNIX" ];
      } // optionalAttrs (cfg.environmentFile != null) {
        EnvironmentFile = toString cfg.environmentFile;
      };
    };
    systemd.timers.ml-storage-monitor = mkIf cfg.storageMonitor.enable {
      description = "Check ml-offload's model storage";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "5min";
        OnUnitActiveSec = cfg.storageMonitor.interval;
        Persistent = true;
      };
    };
  };
}
