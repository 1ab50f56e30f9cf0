"""The room rules of issue 13, read from the source (no import-linter here yet):

- ``felix_like`` imports nothing of ``bgpd``;
- its vocabulary (``updates``) and the classification (``classify``) import no I/O;
- nothing in ``bgpd`` names a ``RouteTable``: the dataplane is reached through
  ``Dataplane`` only (one way in);
- the status views do not import the daemon (they read snapshots).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parents[2]


def imports(path: pathlib.Path) -> set[str]:
    """Every module (and ``module.name``) a file imports, at any depth."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_felix_like_imports_nothing_of_bgpd():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.split(".")[0] == "bgpd")
           for p in (ROOT / "felix_like").glob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("module", ["updates", "classify"])
def test_the_vocabulary_and_the_classification_do_no_io(module):
    # felix_like.policy_model: the policy resources (values + validation), issue 14;
    # test_the_policy_values_do_no_io below holds it to the same rule.
    pure = {"__future__", "socket", "collections", "collections.abc", "dataclasses", "typing",
            "felix_like.updates", "tunnels.encap", "felix_like", "felix_like.policy_model"}
    mods = {m for m in imports(ROOT / "felix_like" / f"{module}.py")
            if not any(m.startswith(f"{p}.") for p in ("felix_like.updates", "tunnels.encap",
                                                         "dataclasses", "typing",
                                                         "collections.abc", "__future__"))}
    assert mods <= pure, sorted(mods - pure)


def test_the_policy_values_do_no_io():
    """The vocabulary carries ``felix_like.policy_model`` values: parsing and validation
    only (YAML text in, values out), no files, sockets or processes."""
    mods = imports(ROOT / "felix_like" / "policy_model.py")
    io = {m for m in mods if m.split(".")[0] in (
        "os", "subprocess", "socket", "pyroute2", "etcd3", "grpc", "shutil", "pathlib", "io")}
    assert io == set()
    assert {m.split(".")[0] for m in mods} <= {
        "__future__", "ipaddress", "math", "re", "collections", "dataclasses", "config",
        "felix_like"}, sorted(mods)


def names_in_code(path: pathlib.Path) -> set[str]:
    """Identifiers the code uses (names, attributes, imported names), not its comments."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.name.rsplit(".", 1)[-1])
    return out


def test_nothing_in_bgpd_names_a_route_table():
    users = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bgpd").rglob("*.py")
                   if {"RouteTable", "KernelRouteDriver"} & names_in_code(p))
    assert users == []


def test_the_views_do_not_import_the_daemon():
    assert not any(m.startswith("bgpd.node.daemon") for m in
                   imports(ROOT / "bgpd" / "node" / "views.py"))
