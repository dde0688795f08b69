"""House rules that keep the code easy to change: module size, no private imports across
modules, no import cycles, and a snapshot of the loaded Dagster definitions."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gen4gen", "gen4gen_assets", "resources")
SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, top_level_only: bool):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            yield _resolve(module, node, path.name == "__init__.py"), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these modules along their concerns: {long}"


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    offenders = []
    for module, path in modules.items():
        for source, names in _imports(module, path, top_level_only=False):
            if source.split(".")[0] not in PACKAGES or source == module:
                continue
            offenders += [f"{module} imports {source}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not offenders, offenders


def test_no_import_cycle_at_module_level():
    modules = _modules()
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for source, names in _imports(module, path, top_level_only=True):
            for target in [f"{source}.{n}" for n in names] + [source]:
                if target in modules and target != module:
                    graph[module].add(target)
                    break
    # Packages import their submodules to re-export them: edges from a package to its own
    # submodules are structure, not cycles.
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for target in sorted(graph[node]):
            visit(target)
        stack.pop()

    for module in sorted(graph):
        visit(module)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles[:5])


def _definitions_snapshot() -> dict:
    from gen4gen_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": getattr(partitions, "name", None) if partitions else None,
            "pools": sorted(node.pools or []),
            "code_version": node.code_version,
            "kinds": sorted(node.kinds),
        }
    checks = sorted(k.to_user_string() for k in graph.asset_check_keys)
    jobs = sorted(j.name for j in defs.resolve_all_job_defs() if not j.name.startswith("__"))
    sensors = sorted(s.name for s in defs.resolve_sensor_defs()) if hasattr(defs, "resolve_sensor_defs") else \
        sorted(s.name for s in defs.sensors)
    return {"assets": assets, "checks": checks, "jobs": jobs, "sensors": sensors}


def test_loaded_definitions_match_the_snapshot():
    """Asset keys, deps, partitions, pools, code versions, checks, jobs and sensors. After an
    intended change, rewrite the snapshot with `python -m tests.test_house`."""
    actual = _definitions_snapshot()
    if not SNAPSHOT.is_file():
        pytest.fail(f"{SNAPSHOT} is missing; write it with `python -m tests.test_house`")
    assert actual == json.loads(SNAPSHOT.read_text(encoding="utf-8"))


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(_definitions_snapshot(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT}")
