"""Which ExaBGP the speaker runs (PyPy's venv first -- the brief's fixed default --, CPython
next to our interpreter when that is missing, $PATH last) and the
environment PyPy gets. Unit tests on fake venv layouts in temp dirs (no root, no daemons)."""

from __future__ import annotations

import os

import pytest

from bgpd.bgp.speaker import (
    PYPY_GC_ENV,
    default_exabgp,
    exabgp_interpreter,
    is_pypy,
    spawn_environment,
)


def script(path, interpreter: str = "/bin/sh", mode: int = 0o755) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"#!{interpreter}\nexit 0\n")
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def layout(tmp_path):
    """A venv with ExaBGP under PyPy and under CPython, and another exabgp on a PATH dir."""
    venv = tmp_path / "venv"
    pypy = script(venv / "exabgp-pypy" / "bin" / "exabgp",
                  str(venv / "exabgp-pypy" / "bin" / "pypy3"))
    cpython = script(venv / "bin" / "exabgp", str(venv / "bin" / "python"))
    on_path = script(tmp_path / "usr" / "bin" / "exabgp", "/usr/bin/python3")
    return {"prefix": str(venv), "executable": str(venv / "bin" / "python"),
            "path": str(tmp_path / "usr" / "bin"), "pypy": pypy, "cpython": cpython,
            "on_path": on_path}


def choose(lay) -> str:
    return default_exabgp(prefix=lay["prefix"], executable=lay["executable"], path=lay["path"])


def test_pypy_exabgp_is_preferred(layout):
    assert choose(layout) == layout["pypy"]


def test_cpython_exabgp_when_pypy_is_missing(layout):
    os.unlink(layout["pypy"])
    assert choose(layout) == layout["cpython"]


def test_cpython_exabgp_when_pypy_is_not_executable(layout):
    os.chmod(layout["pypy"], 0o644)
    assert choose(layout) == layout["cpython"]


def test_a_directory_named_exabgp_is_not_taken(layout):
    os.unlink(layout["pypy"])
    os.mkdir(layout["pypy"])
    assert choose(layout) == layout["cpython"]


def test_path_when_neither_venv_has_it(layout):
    os.unlink(layout["pypy"])
    os.unlink(layout["cpython"])
    assert choose(layout) == layout["on_path"]


def test_bare_name_when_nothing_is_found(layout, tmp_path):
    os.unlink(layout["pypy"])
    os.unlink(layout["cpython"])
    assert default_exabgp(prefix=layout["prefix"], executable=layout["executable"],
                          path=str(tmp_path / "empty")) == "exabgp"


def test_interpreter_is_read_from_the_shebang(layout, tmp_path):
    assert exabgp_interpreter(layout["pypy"]).endswith("/exabgp-pypy/bin/pypy3")
    assert is_pypy(exabgp_interpreter(layout["pypy"]))
    assert exabgp_interpreter(layout["cpython"]).endswith("/venv/bin/python")
    assert not is_pypy(exabgp_interpreter(layout["cpython"]))
    via_env = script(tmp_path / "e" / "exabgp", "/usr/bin/env pypy3")
    assert os.path.basename(exabgp_interpreter(via_env)) == "pypy3"
    assert exabgp_interpreter(str(tmp_path / "missing")) == ""
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x7fELF\x02\x01")
    assert exabgp_interpreter(str(binary)) == ""


def test_a_python_symlink_to_pypy_counts_as_pypy(tmp_path, monkeypatch):
    real = script(tmp_path / "lib" / "pypy3.9", "/bin/sh")
    link = tmp_path / "bin" / "python3"
    os.makedirs(link.parent)
    os.symlink(real, link)
    assert is_pypy(str(link))
    assert not is_pypy("/usr/bin/python3.11")
    (tmp_path / "pypy-cwd").mkdir()
    monkeypatch.chdir(tmp_path / "pypy-cwd")  # no interpreter: not PyPy, whatever the cwd
    assert not is_pypy("")


def test_pypy_gets_gc_settings_cpython_does_not():
    settings = {"exabgp.tcp.port": "179"}
    pypy = spawn_environment({"HOME": "/root"}, "/v/exabgp-pypy/bin/pypy3", settings)
    assert {k: pypy[k] for k in PYPY_GC_ENV} == PYPY_GC_ENV
    assert pypy["HOME"] == "/root" and pypy["exabgp.tcp.port"] == "179"
    cpython = spawn_environment({"HOME": "/root"}, "/v/bin/python", settings)
    assert not any(k.startswith("PYPY_GC_") for k in cpython)
    assert cpython == {"HOME": "/root", "exabgp.tcp.port": "179"}


def test_operator_gc_setting_wins_over_ours():
    key = next(iter(PYPY_GC_ENV))
    env = spawn_environment({key: "64MB"}, "/usr/bin/pypy3", {})
    assert env[key] == "64MB"
    # ExaBGP settings (SpeakerConfig.extra_env included) are applied last.
    assert spawn_environment({}, "/usr/bin/pypy3", {key: ""})[key] == ""
