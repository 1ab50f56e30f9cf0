"""The package's structure: one exception root, and etcd reached only through the store."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import ipam
from ipam.errors import IpamError

pytestmark = pytest.mark.unit
MODULES = sorted(m.name for m in pkgutil.iter_modules(ipam.__path__, "ipam."))


def test_every_exception_class_in_ipam_derives_from_ipam_error():
    strays = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == name and not issubclass(obj, IpamError)):
                strays.append(f"{name}.{attr}")
    assert strays == []
    assert "ipam.leases" in MODULES and "ipam.pools" in MODULES   # the walk saw the parts


def test_only_the_store_imports_the_etcd_client():
    importers = []
    for path in sorted(Path(ipam.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("etcd3", "grpc") for n in names):
                importers.append(path.name)
    assert set(importers) == {"store.py"}
