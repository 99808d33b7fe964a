"""Render a kustomization under k8s/ into plain Kubernetes objects, without the kustomize binary.

Why: no kustomize (nor kubectl) is installed where the tests run, yet `make test` must validate
exactly what `kubectl apply -k k8s/overlays/<name>` would create. So this script implements the
handful of kustomize features that k8s/ uses, and refuses everything else (an unknown key in a
kustomization.yaml is an error, never ignored), so the manifests cannot silently drift into
features that are rendered here differently from kustomize.

Supported, with the same meaning as in kustomize:

- `resources`: YAML files (one or more documents each) and directories holding a
  kustomization.yaml, rendered recursively, in order.
- `patches` with a `path` (optionally `target: {kind, name}`) holding a strategic-merge patch:
  the patch names its object by apiVersion/kind/metadata.name (or by `target`); mappings merge
  key by key; lists of mappings that all carry a `name` (containers, env, ports, volumes...)
  merge item by item on `name`, like Kubernetes' patchMergeKey; other lists are replaced; a null
  value deletes the key. `$patch` directives and JSON6902 patches are not supported.
- `configMapGenerator` with `name`, `literals` (KEY=VALUE), `behavior` (create, merge, replace)
  and `options.disableNameSuffixHash`. The generated name gets a suffix derived from a SHA-256
  of the content (modelled on kustomize's; the exact characters may differ from kustomize's, the
  property that matters is kept: different data, different name, so pods roll on a change).
  References to the generated ConfigMap from pod templates (envFrom, env valueFrom, volumes,
  projected volumes) are rewritten to the suffixed name.

Usage: python tools/render_k8s.py k8s/overlays/dev  (prints the objects as a YAML stream).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
_KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches", "configMapGenerator"}
_GENERATOR_KEYS = {"name", "literals", "behavior", "options"}
_PATCH_KEYS = {"path", "target"}


class RenderError(ValueError):
    """The kustomization uses a feature this renderer does not implement, or is inconsistent."""


class _Generated:
    """A ConfigMap from a generator, before its name suffix is computed."""

    def __init__(self, name: str, data: dict[str, str], hashed: bool) -> None:
        self.name = name
        self.data = data
        self.hashed = hashed

    def to_object(self) -> Obj:
        name = f"{self.name}-{content_hash(self.name, self.data)}" if self.hashed else self.name
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                "data": dict(self.data)}


def content_hash(name: str, data: dict[str, str]) -> str:
    """Ten characters that change whenever the ConfigMap's data changes (kustomize-like)."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": name},
                         sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    # kustomize avoids vowels and digits that could spell words or look like numbers.
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def render(directory: Path) -> list[Obj]:
    """The objects that `kubectl apply -k directory` would create, in a stable order."""
    objects, generated = _render(Path(directory))
    names = {g.name: g.to_object()["metadata"]["name"] for g in generated}
    out = [*objects, *(g.to_object() for g in generated)]
    for obj in out:
        _rename_configmap_refs(obj, names)
    return out


def _render(directory: Path) -> tuple[list[Obj], list[_Generated]]:
    path = directory / KUSTOMIZATION
    if not path.is_file():
        raise RenderError(f"{directory} has no {KUSTOMIZATION}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise RenderError(f"{path}: unsupported kustomization keys {sorted(unknown)}")
    objects: list[Obj] = []
    generated: list[_Generated] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            sub_objects, sub_generated = _render(target)
            objects += sub_objects
            generated += sub_generated
        else:
            objects += [doc for doc in yaml.safe_load_all(target.read_text()) if doc is not None]
    for patch_spec in spec.get("patches", []):
        _apply_patch(directory, path, patch_spec, objects)
    for gen in spec.get("configMapGenerator", []):
        _generate(path, gen, generated)
    return objects, generated


def _apply_patch(directory: Path, path: Path, patch_spec: Obj, objects: list[Obj]) -> None:
    if set(patch_spec) - _PATCH_KEYS or "path" not in patch_spec:
        raise RenderError(f"{path}: a patch needs `path` (and optionally `target`), "
                          f"got {sorted(patch_spec)}")
    for patch in yaml.safe_load_all((directory / patch_spec["path"]).read_text()):
        if patch is None:
            continue
        target = patch_spec.get("target") or {}
        kind = target.get("kind", patch.get("kind"))
        name = target.get("name", patch.get("metadata", {}).get("name"))
        matches = [o for o in objects
                   if o.get("kind") == kind and o.get("metadata", {}).get("name") == name]
        if len(matches) != 1:
            raise RenderError(f"{path}: patch {patch_spec['path']} matches {len(matches)} "
                              f"objects ({kind}/{name}), expected exactly one")
        merged = strategic_merge(matches[0], patch)
        objects[objects.index(matches[0])] = merged


def strategic_merge(base: Any, patch: Any) -> Any:
    """The subset of strategic-merge-patch described in the module docstring."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named_items(base) \
            and _named_items(patch):
        out_list = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out_list)}
        for item in patch:
            if item["name"] in index:
                pos = index[item["name"]]
                out_list[pos] = strategic_merge(out_list[pos], item)
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _named_items(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _generate(path: Path, gen: Obj, generated: list[_Generated]) -> None:
    if set(gen) - _GENERATOR_KEYS:
        raise RenderError(f"{path}: unsupported configMapGenerator keys "
                          f"{sorted(set(gen) - _GENERATOR_KEYS)}")
    options = gen.get("options") or {}
    if set(options) - {"disableNameSuffixHash"}:
        raise RenderError(f"{path}: unsupported generator options {sorted(options)}")
    data: dict[str, str] = {}
    for literal in gen.get("literals", []):
        key, sep, value = str(literal).partition("=")
        if not sep or not key:
            raise RenderError(f"{path}: literal {literal!r} is not KEY=VALUE")
        data[key] = value
    behavior = gen.get("behavior", "create")
    existing = [g for g in generated if g.name == gen["name"]]
    hashed = not options.get("disableNameSuffixHash", False)
    if behavior == "create":
        if existing:
            raise RenderError(f"{path}: ConfigMap {gen['name']} already generated; use "
                              f"behavior: merge or replace")
        generated.append(_Generated(gen["name"], data, hashed))
    elif behavior in ("merge", "replace"):
        if len(existing) != 1:
            raise RenderError(f"{path}: behavior {behavior} but no ConfigMap {gen['name']} "
                              f"in the resources")
        target = existing[0]
        target.data = {**target.data, **data} if behavior == "merge" else data
        if "options" in gen:
            target.hashed = hashed
    else:
        raise RenderError(f"{path}: unknown generator behavior {behavior!r}")


def _rename_configmap_refs(obj: Any, names: dict[str, str]) -> None:
    """Point every reference to a generated ConfigMap at its suffixed name, as kustomize does."""
    if isinstance(obj, dict):
        for key in ("configMapRef", "configMapKeyRef", "configMap"):
            ref = obj.get(key)
            if isinstance(ref, dict) and ref.get("name") in names:
                ref["name"] = names[ref["name"]]
        for value in obj.values():
            _rename_configmap_refs(value, names)
    elif isinstance(obj, list):
        for value in obj:
            _rename_configmap_refs(value, names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path, help="a directory with a kustomization.yaml")
    args = parser.parse_args(argv)
    try:
        objects = render(args.directory)
    except RenderError as exc:
        sys.stderr.write(f"render_k8s: {exc}\n")
        return 1
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
