"""An artifact's ancestry as a nested tree, and as the text `gen4gen lineage` prints."""
from __future__ import annotations

import json


def build_tree(root: str, nodes: dict[str, dict], edges: list[tuple[str, str, str]],
               expand: set[str] | None = None) -> dict:
    """Nested ``{..., "role", "parents": [...]}`` from rows and ``(child, parent, role)`` edges.

    Only nodes in ``expand`` (the root and its closure) show their parents: files an aggregate
    lists appear as leaves.
    """
    children: dict[str, list[tuple[str, str]]] = {}
    for child, parent, role in edges:
        children.setdefault(child, []).append((parent, role))

    def build(node_id: str, role: str | None, seen: frozenset) -> dict:
        node = dict(nodes.get(node_id, {"id": node_id, "path": None, "missing_row": True}))
        node["role"] = role
        parents = children.get(node_id, []) if expand is None or node_id in expand else []
        node["parents"] = [build(p, r, seen | {node_id}) for p, r in sorted(parents, key=lambda x: (x[1], x[0]))
                           if p not in seen]
        return node

    return build(root, None, frozenset())


def format_tree(node: dict, indent: str = "", last: bool = True, top: bool = True,
                shown: set[str] | None = None) -> list[str]:
    """The ancestry tree as text, one artifact per line with its step's parameters.

    A subtree already printed (a cut-out used by both the layout and the composite) is
    printed once; later occurrences say so instead of repeating it.
    """
    shown = set() if shown is None else shown
    branch = "" if top else ("└─ " if last else "├─ ")
    role = f"[{node['role']}] " if node.get("role") else ""
    if node.get("missing_row"):
        return [f"{indent}{branch}{role}{node['id']} (no lineage row)"]
    partition = f"[{node['partition_key']}]" if node.get("partition_key") else ""
    repeated = node["id"] in shown and node["parents"]
    lines = [f"{indent}{branch}{role}{node['asset_key']}{partition} {node['path']}  sha256 {node['sha256'][:16]}  "
             f"run {str(node['run_id'])[:8]}  code {node['code_version']}  id {node['id']}"
             + ("  (ancestry shown above)" if repeated else "")]
    if repeated:
        return lines
    shown.add(node["id"])
    child_indent = indent + ("" if top else ("   " if last else "│  "))
    if node.get("params"):
        lines.append(f"{child_indent}    params: {json.dumps(node['params'], sort_keys=True)}")
    for i, parent in enumerate(node["parents"]):
        lines += format_tree(parent, child_indent, i == len(node["parents"]) - 1, top=False, shown=shown)
    return lines
