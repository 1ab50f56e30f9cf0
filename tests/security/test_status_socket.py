"""Who may read the daemon's status socket: root, and members of ``status.socket_group``.

A real daemon in a one-node lab, real system users and a group made for the test with
``useradd --system`` / ``groupadd --system`` and removed after it, and the real CLI run as
them with ``runuser``. The socket lives in a world-traversable directory here, so only the
socket's own owner, group and mode decide (the lab's workdir is 0700).

The venv's interpreter lives under /root (0700 on this machine), which other users cannot
execute, so the CLI script runs as them under the system python3 (also 3.11) with the
project and the venv's site-packages on PYTHONPATH: the same code, another interpreter.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid

import pytest

from lab.netns import sh
from lab.procs import wait_for
from lab.topology import Lab

pytestmark = pytest.mark.e2e

NODE = "node-a1"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SITE = os.path.join(os.path.dirname(os.path.dirname(sys.executable)), "lib",
                    f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
CLI = os.path.join(os.path.dirname(sys.executable), "noderouter")
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def accounts():
    """A group, a member of it and an outsider: system accounts, removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    group, member, outsider = f"nrt-g{tag}", f"nrt-m{tag}", f"nrt-o{tag}"
    made: list[tuple[str, str]] = []
    try:
        subprocess.run(["groupadd", "--system", group], check=True)
        made.append(("groupdel", group))
        for user, extra in ((member, ["-G", group]), (outsider, [])):
            subprocess.run(["useradd", "--system", "-M", "-N", "-s", "/usr/sbin/nologin",
                            *extra, user], check=True)
            made.insert(0, ("userdel", user))
        yield {"group": group, "member": member, "outsider": outsider}
    finally:
        errors = [f"{cmd} {name}" for cmd, name in made
                  if subprocess.run([cmd, name], capture_output=True).returncode != 0]
        assert not errors, f"could not remove test accounts: {errors}"
        for _cmd, name in made:
            with pytest.raises(KeyError):
                (pwd.getpwnam if _cmd == "userdel" else grp.getgrnam)(name)


@pytest.fixture(scope="module")
def lab():
    the_lab = Lab(racks=1, nodes_per_rack=1, design="tor")
    sockdir = tempfile.mkdtemp(prefix="nr-statussock-")
    os.chmod(sockdir, 0o755)
    try:
        the_lab.up()
        the_lab.sockdir = sockdir
        yield the_lab
    finally:
        errors = the_lab.down()
        shutil.rmtree(sockdir, ignore_errors=True)
        assert errors == []


def start(lab: Lab, **overrides) -> str:
    path = os.path.join(lab.sockdir, "status.sock")
    lab.stop_noderouter(NODE)
    lab.start_noderouter(NODE, **{"status.socket": path, **overrides})
    wait_for(lambda: os.path.exists(path) and as_root(path).returncode == 0, 90,
             what="the daemon's status socket")
    return path


def as_root(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "status", "--socket", path, *args], capture_output=True,
                          text=True, timeout=60)


def as_user(user: str, path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", f"PYTHONPATH={REPO}:{SITE}", SYSTEM_PYTHON, CLI,
         "status", "--socket", path, *args],
        capture_output=True, text=True, timeout=60, cwd="/")


def assert_denied(res: subprocess.CompletedProcess, path: str) -> None:
    assert res.returncode == 1 and res.stdout == "", (res.returncode, res.stdout, res.stderr)
    assert res.stderr.count("\n") == 1, res.stderr
    assert "permission denied" in res.stderr and path in res.stderr


def test_cli_runs_as_another_user_at_all(lab, accounts):
    # Guards the setup: a failure below must be the socket's doing, not the interpreter's.
    res = as_user(accounts["outsider"], os.path.join(lab.sockdir, "absent.sock"))
    assert res.returncode == 1 and "does not exist" in res.stderr, res.stderr


def test_default_socket_is_root_only(lab, accounts):
    path = start(lab)
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)
    assert as_root(path).returncode == 0
    assert_denied(as_user(accounts["outsider"], path), path)
    assert_denied(as_user(accounts["member"], path, "-o", "json"), path)


def test_configured_group_can_read_others_cannot(lab, accounts):
    path = start(lab, **{"status.socket_group": accounts["group"]})
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam(accounts["group"]).gr_gid)
    res = as_user(accounts["member"], path, "-o", "json")
    assert res.returncode == 0, res.stderr
    assert f'"node": "{NODE}"' in res.stdout
    assert_denied(as_user(accounts["outsider"], path), path)


def test_configured_owner(lab, accounts):
    path = start(lab, **{"status.socket_owner": accounts["outsider"]})
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam(accounts["outsider"]).pw_uid, 0)
    assert as_user(accounts["outsider"], path).returncode == 0
    assert_denied(as_user(accounts["member"], path), path)


def test_unknown_socket_group_is_refused_clearly(lab):
    lab.stop_noderouter(NODE)
    conf = os.path.join(lab.node_dir(NODE), "bad-group.yaml")
    with open(conf, "w") as f:
        f.write(lab.node_config(NODE, **{"status.socket": os.path.join(lab.sockdir, "x.sock"),
                                         "status.socket_group": "nrt-no-such-group"}))
    res = sh([CLI, "run", "--config", conf, "--run-dir",
              os.path.join(lab.node_dir(NODE), "run-bad")],
             netns=lab.node(NODE).netns, check=False, timeout=60)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "nrt-no-such-group" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
