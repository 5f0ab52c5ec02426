# Render a Nix attribute set as TOML, in pure Nix (so the module's config file is a plain
# string: nothing to build, and evaluation-time tests see the exact text). Nulls and empty
# tables are left out: the gateway's own defaults apply to whatever is not set.
{ lib }:
let
  inherit (lib)
    concatStrings
    concatStringsSep
    filterAttrs
    isAttrs
    isList
    mapAttrs
    mapAttrsToList
    ;

  clean =
    v:
    if isAttrs v then
      filterAttrs (k: x: k != "_module" && x != null && x != { }) (mapAttrs (_: clean) v)
    else if isList v then
      map clean v
    else
      v;

  key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
  dotted = path: concatStringsSep "." (map key path);

  value =
    v:
    if builtins.isString v || builtins.isPath v then
      builtins.toJSON (toString v)
    else if builtins.isBool v then
      (if v then "true" else "false")
    else if builtins.isInt v || builtins.isFloat v then
      toString v
    else if isList v then
      "[" + concatStringsSep ", " (map value v) + "]"
    else if isAttrs v then
      "{" + concatStringsSep ", " (mapAttrsToList (k: x: "${key k} = ${value x}") v) + "}"
    else
      throw "ml-offload: cannot write a ${builtins.typeOf v} to TOML";

  isTableList = v: isList v && v != [ ] && builtins.all isAttrs v;
  pairs = attrs: concatStrings (mapAttrsToList (k: v: "${key k} = ${value v}\n") attrs);

  table =
    path: attrs:
    let
      plain = filterAttrs (_: v: !(isAttrs v) && !(isTableList v)) attrs;
      tables = filterAttrs (_: isAttrs) attrs;
      arrays = filterAttrs (_: isTableList) attrs;
    in
    (if path == [ ] then "" else "\n[${dotted path}]\n")
    + pairs plain
    + concatStrings (mapAttrsToList (k: t: table (path ++ [ k ]) t) tables)
    + concatStrings (
      mapAttrsToList (
        k: items: concatStrings (map (item: "\n[[${dotted (path ++ [ k ])}]]\n" + pairs item) items)
      ) arrays
    );
in
{
  inherit clean;
  toTOML = attrs: table [ ] (clean attrs);
}
