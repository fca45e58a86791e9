#!/usr/bin/env python3
"""Lists the crate's public API, one item per line, from rustdoc's JSON output.

    RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
        cargo doc --lib --no-deps --all-features --target-dir target/public-api
    python3 scripts/public-api.py target/public-api/doc/fitviz_events.json > public-api.txt

Every public path is listed (a re-exported item under each path it can be named by), with
its kind and, for functions, fields, constants and type aliases, its signature; trait
implementations are listed on the type (`impl Clone for fitviz_events::Receipt`), except
the ones the compiler derives by itself (auto traits) and blanket ones. `.ci/run` compares
the listing with the checked-in `public-api.txt`, so that every change to the public API
shows in review: regenerate it with `bash scripts/public-api.sh --write` and commit it.

rustdoc's JSON format is unstable; this reads format versions 50 and later (checked on
57, Rust 1.95) and fails loudly on anything it does not understand.
"""

import json
import sys

MIN_FORMAT = 50


def fail(message):
    sys.exit(f"public-api.py: {message}")


class Lister:
    def __init__(self, doc):
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.crate = self.index[str(doc["root"])]["name"]
        self.lines = set()
        self.visiting = set()
        # Item id -> the shortest public path it can be named by (found by a first walk),
        # so that signatures name types as users do, whatever module defines them.
        self.public = {}

    def item(self, id_):
        return self.index.get(str(id_))

    # ---- types -----------------------------------------------------------------------
    def path_name(self, path):
        name = path.get("path") or path.get("name") or "?"
        # The crate's own items by their canonical path, so that how a file happens to
        # import a type (`super::error::TopologyError`) does not show as an API change.
        public = self.public.get(str(path.get("id")))
        if public:
            name = public
        else:
            known = self.paths.get(str(path.get("id")))
            if known and known.get("crate_id") == 0:
                name = "::".join(known["path"])
        return name + self.args(path.get("args"))

    def args(self, args):
        if not args:
            return ""
        if "angle_bracketed" in args:
            a = args["angle_bracketed"]
            parts = [self.generic_arg(x) for x in a.get("args", [])]
            parts += [self.constraint(c) for c in a.get("constraints", [])]
            return f"<{', '.join(parts)}>" if parts else ""
        if "parenthesized" in args:
            p = args["parenthesized"]
            out = f"({', '.join(self.ty(t) for t in p.get('inputs', []))})"
            if p.get("output"):
                out += f" -> {self.ty(p['output'])}"
            return out
        if "return_type_notation" in args:
            return "(..)"
        fail(f"unknown generic args {args}")

    def generic_arg(self, arg):
        if arg == "infer":
            return "_"
        kind, value = next(iter(arg.items()))
        if kind == "type":
            return self.ty(value)
        if kind == "lifetime":
            return value
        if kind == "const":
            return value.get("expr", "?")
        fail(f"unknown generic arg {arg}")

    def constraint(self, c):
        name = c["name"] + self.args(c.get("args"))
        binding = c["binding"]
        if "equality" in binding:
            term = binding["equality"]
            value = self.ty(term["type"]) if "type" in term else term.get("constant", {}).get("expr", "?")
            return f"{name} = {value}"
        return f"{name}: {self.bounds(binding['constraint'])}"

    def bound(self, b):
        if "trait_bound" in b:
            t = b["trait_bound"]
            modifier = {"none": "", "maybe": "?", "maybe_const": "~const "}.get(t.get("modifier", "none"), "")
            hrtb = ""
            if t.get("generic_params"):
                hrtb = f"for<{', '.join(p['name'] for p in t['generic_params'])}> "
            return f"{hrtb}{modifier}{self.path_name(t['trait'])}"
        if "outlives" in b:
            return b["outlives"]
        if "use" in b:
            return "use<..>"
        fail(f"unknown bound {b}")

    def bounds(self, bs):
        return " + ".join(self.bound(b) for b in bs)

    def ty(self, t):
        if t is None:
            return "()"
        kind, v = next(iter(t.items()))
        if kind == "resolved_path":
            return self.path_name(v)
        if kind in ("generic", "primitive"):
            return v
        if kind == "borrowed_ref":
            lt = f"{v['lifetime']} " if v.get("lifetime") else ""
            mut = "mut " if v.get("is_mutable") else ""
            return f"&{lt}{mut}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return f"*{'mut' if v.get('is_mutable') else 'const'} {self.ty(v['type'])}"
        if kind == "slice":
            return f"[{self.ty(v)}]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "tuple":
            inner = ", ".join(self.ty(x) for x in v)
            return f"({inner}{',' if len(v) == 1 else ''})"
        if kind == "impl_trait":
            return f"impl {self.bounds(v)}"
        if kind == "dyn_trait":
            traits = " + ".join(self.path_name(p["trait"]) for p in v["traits"])
            lt = f" + {v['lifetime']}" if v.get("lifetime") else ""
            return f"dyn {traits}{lt}"
        if kind == "qualified_path":
            trait = f" as {self.path_name(v['trait'])}" if v.get("trait") else ""
            return f"<{self.ty(v['self_type'])}{trait}>::{v['name']}{self.args(v.get('args'))}"
        if kind == "function_pointer":
            return f"fn({', '.join(self.ty(x[1]) for x in v['sig']['inputs'])})"
        if kind == "pat":
            return self.ty(v["type"])
        if t == "infer" or kind == "infer":
            return "_"
        fail(f"unknown type {t}")

    def generics(self, g):
        params = []
        for p in g.get("params", []):
            kind, v = next(iter(p["kind"].items()))
            if kind == "type":
                if v.get("is_synthetic"):
                    continue
                bounds = f": {self.bounds(v['bounds'])}" if v.get("bounds") else ""
                params.append(p["name"] + bounds)
            elif kind == "lifetime":
                params.append(p["name"])
            elif kind == "const":
                params.append(f"const {p['name']}: {self.ty(v['type'])}")
        out = f"<{', '.join(params)}>" if params else ""
        preds = []
        for w in g.get("where_predicates", []):
            if "bound_predicate" in w:
                b = w["bound_predicate"]
                preds.append(f"{self.ty(b['type'])}: {self.bounds(b['bounds'])}")
            elif "lifetime_predicate" in w:
                b = w["lifetime_predicate"]
                preds.append(f"{b['lifetime']}: {' + '.join(b['outlives'])}")
            elif "eq_predicate" in w:
                preds.append("(=)")
        where = f" where {', '.join(preds)}" if preds else ""
        return out, where

    def function(self, name, f):
        params, where = self.generics(f["generics"])
        header = f.get("header", {})
        prefix = ""
        if header.get("is_const"):
            prefix += "const "
        if header.get("is_async"):
            prefix += "async "
        if header.get("is_unsafe"):
            prefix += "unsafe "
        inputs = []
        for arg_name, t in f["sig"]["inputs"]:
            if arg_name == "self":
                rendered = self.ty(t)
                inputs.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(rendered, f"self: {rendered}"))
            else:
                inputs.append(f"{arg_name}: {self.ty(t)}")
        out = f["sig"].get("output")
        ret = f" -> {self.ty(out)}" if out is not None else ""
        return f"{prefix}fn {name}{params}({', '.join(inputs)}){ret}{where}"

    # ---- items -----------------------------------------------------------------------
    def emit(self, line):
        self.lines.add(line)

    def is_public(self, item):
        return item.get("visibility") == "public"

    def walk_module(self, path, module_id):
        if (path, module_id) in self.visiting:
            return
        self.visiting.add((path, module_id))
        module = self.item(module_id)
        for child_id in module["inner"]["module"]["items"]:
            child = self.item(child_id)
            if child is None or not self.is_public(child):
                continue
            self.walk_item(path, child_id, child)

    def walk_item(self, path, id_, item, name=None):
        kind, inner = next(iter(item["inner"].items()))
        name = name or item.get("name")
        if kind == "use":
            target_id = inner.get("id")
            target = self.item(target_id) if target_id is not None else None
            if inner.get("is_glob"):
                if target is None:
                    self.emit(f"pub use {path}::{inner['source']}::*")
                else:
                    self.walk_module(path, target_id)
                return
            if target is None:
                # A re-export of another crate's item.
                self.emit(f"pub use {path}::{inner['name']} = {inner['source']}")
                return
            self.walk_item(path, target_id, target, inner["name"])
            return
        full = f"{path}::{name}"
        known = self.public.get(str(id_))
        if known is None or (len(full), full) < (len(known), known):
            self.public[str(id_)] = full
        if kind == "module":
            self.emit(f"mod {full}")
            self.walk_module(full, id_)
        elif kind == "struct":
            params, where = self.generics(inner["generics"])
            self.emit(f"struct {full}{params}{where}")
            s = inner["kind"]
            if isinstance(s, dict) and "plain" in s:
                for field_id in s["plain"]["fields"]:
                    self.field(full, field_id)
                if s["plain"].get("has_stripped_fields"):
                    self.emit(f"struct {full} has private fields")
            elif isinstance(s, dict) and "tuple" in s:
                for i, field_id in enumerate(s["tuple"]):
                    if field_id is not None:
                        self.field(full, field_id, str(i))
            self.impls(full, id_, inner.get("impls", []))
        elif kind == "enum":
            params, where = self.generics(inner["generics"])
            attrs = " #[non_exhaustive]" if any("non_exhaustive" in str(a) for a in item.get("attrs", [])) else ""
            self.emit(f"enum {full}{params}{where}{attrs}")
            for variant_id in inner["variants"]:
                variant = self.item(variant_id)
                vkind = variant["inner"]["variant"]["kind"]
                fields = ""
                if isinstance(vkind, dict) and "tuple" in vkind:
                    fields = "(" + ", ".join(
                        self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_"
                        for f in vkind["tuple"]
                    ) + ")"
                elif isinstance(vkind, dict) and "struct" in vkind:
                    fields = " { " + ", ".join(
                        f"{self.item(f)['name']}: {self.ty(self.item(f)['inner']['struct_field'])}"
                        for f in vkind["struct"]["fields"]
                    ) + " }"
                self.emit(f"variant {full}::{variant['name']}{fields}")
            self.impls(full, id_, inner.get("impls", []))
        elif kind == "trait":
            params, where = self.generics(inner["generics"])
            self.emit(f"trait {full}{params}{where}")
            for member_id in inner["items"]:
                self.member(full, self.item(member_id))
        elif kind == "function":
            self.emit(f"pub {self.function(full, inner)}")
        elif kind == "constant":
            self.emit(f"const {full}: {self.ty(inner['type'])}")
        elif kind == "static":
            self.emit(f"static {full}: {self.ty(inner['type'])}")
        elif kind == "type_alias":
            params, _ = self.generics(inner["generics"])
            self.emit(f"type {full}{params} = {self.ty(inner['type'])}")
        elif kind == "macro":
            self.emit(f"macro {full}")
        else:
            self.emit(f"{kind} {full}")

    def field(self, owner, field_id, name=None):
        field = self.item(field_id)
        if field is None or not self.is_public(field):
            return
        self.emit(f"field {owner}::{name or field['name']}: {self.ty(field['inner']['struct_field'])}")

    def member(self, owner, member):
        kind, inner = next(iter(member["inner"].items()))
        if kind == "function":
            self.emit(f"{'provided' if inner.get('has_body') else 'required'} {self.function(owner + '::' + member['name'], inner)}")
        elif kind == "assoc_type":
            self.emit(f"type {owner}::{member['name']}")
        elif kind == "assoc_const":
            self.emit(f"const {owner}::{member['name']}: {self.ty(inner['type'])}")

    def impls(self, owner, owner_id, impl_ids):
        for impl_id in impl_ids:
            impl = self.item(impl_id)
            inner = impl["inner"]["impl"]
            if inner.get("is_synthetic") or inner.get("blanket_impl") is not None:
                continue
            # rustdoc also lists, on a type, the impls that only mention it
            # (`impl Service<Event> for Envelope<S>` on `Event`): keep those for the type.
            implemented_for = inner.get("for", {}).get("resolved_path", {})
            if str(implemented_for.get("id")) != str(owner_id):
                continue
            if (inner.get("trait") or {}).get("path") == "StructuralPartialEq":
                continue  # the compiler's marker behind `#[derive(PartialEq)]`
            if inner.get("trait") is None:
                for member_id in inner["items"]:
                    member = self.item(member_id)
                    if member is None or not self.is_public(member):
                        continue
                    kind, m = next(iter(member["inner"].items()))
                    if kind == "function":
                        self.emit(f"pub {self.function(owner + '::' + member['name'], m)}")
                    elif kind == "assoc_const":
                        self.emit(f"const {owner}::{member['name']}: {self.ty(m['type'])}")
            else:
                negative = "!" if inner.get("is_negative") else ""
                params, where = self.generics(inner["generics"])
                self.emit(f"impl{params} {negative}{self.path_name(inner['trait'])} for {owner}{where}")


def main():
    if len(sys.argv) != 2:
        fail("usage: public-api.py <rustdoc json>")
    with open(sys.argv[1]) as f:
        doc = json.load(f)
    if doc.get("format_version", 0) < MIN_FORMAT:
        fail(f"rustdoc JSON format {doc.get('format_version')} is older than {MIN_FORMAT}")
    lister = Lister(doc)
    # First walk: every item's public paths; second: the listing, naming types by them.
    lister.walk_module(lister.crate, doc["root"])
    lister.lines.clear()
    lister.visiting.clear()
    lister.walk_module(lister.crate, doc["root"])
    for line in sorted(lister.lines):
        print(line)


if __name__ == "__main__":
    main()
