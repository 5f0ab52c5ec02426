# The systemd sandbox of the gateway: the same directives as deploy/systemd/ml-offload.service
# (a test keeps the two equal). GPU devices are added by the module when `gpu.enable` is on.
{
  NoNewPrivileges = true;
  CapabilityBoundingSet = "";
  AmbientCapabilities = "";
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  PrivateMounts = true;
  PrivateUsers = true;
  ProtectProc = "invisible";
  ProcSubset = "pid";
  DevicePolicy = "closed";
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  RemoveIPC = true;
  # MemoryDenyWriteExecute stays off: the CUDA driver JIT-compiles PTX kernels.
  RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
  SystemCallArchitectures = "native";
  SystemCallFilter = [ "@system-service" "~@privileged @mount @obsolete @debug @cpu-emulation" ];
  SystemCallErrorNumber = "EPERM";
  UMask = "0027";
  LimitNOFILE = 65536;
  # The standby (engine.standby) locks a stopped model's weights in memory, within its budget.
  LimitMEMLOCK = "infinity";
}
