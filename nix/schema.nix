# NixOS option types from the gateway's settings schema (settings-schema.json, generated from
# ml_offload.config.Settings: `make nix-schema`). Every documented key becomes an option with
# its type and bounds; unknown keys are errors. Options default to null (not written: the
# gateway's default applies), except keys the schema requires. Secret keys (admin_key, api_key,
# hf_token) have no option: they belong in `environmentFile`, never in the world-readable store.
{ lib }:
let
  inherit (lib) mkOption types;

  nonNull = s: builtins.filter (x: (x.type or "") != "null") (s.anyOf or [ s ]);
  isSecret = s: s.writeOnly or false || builtins.any (x: x.writeOnly or false) (s.anyOf or [ ]);

  bounded =
    base: s:
    let
      checks = lib.filter (c: s ? ${c.key}) [
        { key = "minimum"; ok = v: v >= s.minimum; text = ">= ${toString s.minimum}"; }
        { key = "maximum"; ok = v: v <= s.maximum; text = "<= ${toString s.maximum}"; }
        { key = "exclusiveMinimum"; ok = v: v > s.exclusiveMinimum; text = "> ${toString s.exclusiveMinimum}"; }
      ];
    in
    if checks == [ ] then
      base
    else
      types.addCheck base (v: builtins.all (c: c.ok v) checks)
      // {
        description = "${base.description} (${concatStringsSep ", " (map (c: c.text) checks)})";
      };
  concatStringsSep = lib.concatStringsSep;

  make =
    defs:
    let
      resolve = s: if s ? "$ref" then defs.${lib.removePrefix "#/$defs/" s."$ref"} else s;

      typeOf =
        s0:
        let
          s = resolve s0;
          alternatives = nonNull s;
        in
        if s ? anyOf then
          (if builtins.length alternatives == 1 then typeOf (builtins.head alternatives) else types.oneOf (map typeOf alternatives))
        else if s ? enum then
          types.enum s.enum
        else if s.type or "" == "object" && s ? properties then
          types.submodule { options = optionsOf [ ] s; }
        else if s.type or "" == "object" then
          types.attrsOf (typeOf (s.additionalProperties or { }))
        else if s.type or "" == "array" then
          types.listOf (typeOf (s.items or { }))
        else if s.type or "" == "string" then
          (if s ? pattern then types.strMatching s.pattern else types.str)
        else if s.type or "" == "integer" then
          bounded types.int s
        else if s.type or "" == "number" then
          bounded types.number s
        else if s.type or "" == "boolean" then
          types.bool
        else
          types.anything;

      optionOf =
        required: name: s:
        let
          doc = s.description or (resolve s).description or (s.title or name);
        in
        if builtins.elem name required then
          mkOption { type = typeOf s; description = doc; }
        else
          mkOption {
            type = types.nullOr (typeOf s);
            default = null;
            description = doc + (if s ? default then " (gateway default: ${builtins.toJSON s.default})" else "");
          };

      optionsOf =
        exclude: s:
        lib.mapAttrs (optionOf (s.required or [ ])) (
          lib.filterAttrs (n: p: !(builtins.elem n exclude) && !(isSecret p)) s.properties
        );
    in
    {
      inherit optionsOf resolve;
    };
in
schema:
let
  m = make (schema."$defs" or { });
in
{
  # options of the whole settings file
  settings = m.optionsOf [ ] schema;
  # options of one model, named by its attribute (services.ml-offload.models.<name>)
  model = m.optionsOf [ "name" ] schema."$defs".ModelConfig;
}
