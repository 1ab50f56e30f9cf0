"""The Debian package on a (throwaway) real node (issue 16).

scripts/package builds it; lintian passes (remaining tags overridden with reasons in
packaging/deb/lintian-overrides); it installs into a throwaway root (tests/deploy/
throwaway.py: a private mount namespace with overlays over /usr, /etc, /opt, /var, so
this machine's own directories are never written); the unit passes `systemd-analyze
verify` there; a newer version installs over it; the installed daemon and CNI plugin
run the lab's nodes and their pods ping across racks; purge leaves nothing of ours.
Building takes a minute or two.
"""

import json
import os
import subprocess

import pytest

from lab.topology import Lab
from tests.deploy.throwaway import ThrowawayRoot

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = "/opt/venvs/noderouter"
UNIT = "/lib/systemd/system/noderouter.service"
OURS = [VENV, "/usr/bin/noderouter", "/usr/bin/noderouter-cni", "/opt/cni/bin/noderouter-cni",
        "/etc/noderouter", "/etc/cni/net.d/10-noderouter.conflist.example", UNIT,
        "/usr/share/doc/noderouter", "/usr/share/man/man1/noderouter.1.gz",
        "/var/lib/noderouter"]
# The installed commands must run the package's code, not this checkout's (PYTHONPATH),
# and may write byte code as on a real host (this environment sets DONTWRITEBYTECODE).
CLEAN_ENV = ("env", "-u", "PYTHONPATH", "-u", "PYTHONDONTWRITEBYTECODE")


def sh(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """The package as built by scripts/package, and the same re-versioned as an upgrade."""
    out = tmp_path_factory.mktemp("deb")
    res = sh([os.path.join(REPO, "scripts", "package"), "--out", str(out),
              "--compress", "gzip"], timeout=1500, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    first = res.stdout.strip().splitlines()[-1]
    assert os.path.isfile(first), res.stdout
    version = sh(["dpkg-deb", "-f", first, "Version"]).stdout.strip()
    upgrade_version = version.rsplit("-", 1)[0] + "-" + str(int(version.rsplit("-", 1)[1]) + 1)
    tree = out / "upgrade"
    assert sh(["dpkg-deb", "-R", first, str(tree)]).returncode == 0
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace(f"Version: {version}\n",
                                                   f"Version: {upgrade_version}\n"))
    second = str(out / f"noderouter_{upgrade_version}_upgrade.deb")
    res = sh(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), second])
    assert res.returncode == 0, res.stderr
    return {"first": first, "version": version, "second": second,
            "upgrade_version": upgrade_version}


def test_package_contents(debs):
    listing = sh(["dpkg-deb", "-c", debs["first"]]).stdout
    for path in ("./opt/venvs/noderouter/bin/python3.11", "./opt/venvs/noderouter/bin/noderouter",
                 "./opt/venvs/noderouter/exabgp-pypy/bin/exabgp",
                 "./opt/venvs/noderouter/bin/exabgp",  # the CPython fallback
                 "./usr/bin/noderouter -> /opt/venvs/noderouter/bin/noderouter",
                 "./opt/cni/bin/noderouter-cni -> ../../venvs/noderouter/bin/noderouter-cni",
                 "./etc/noderouter/node.yaml.example",
                 "./etc/cni/net.d/10-noderouter.conflist.example", "." + UNIT):
        assert path in listing, f"{path} not in the package"
    # Shipped as examples only: no active CNI config, no node config.
    assert "./etc/cni/net.d/10-noderouter.conflist\n" not in listing
    assert "./etc/noderouter/node.yaml\n" not in listing
    conffiles = sh(["dpkg-deb", "-I", debs["first"], "conffiles"]).stdout.split()
    assert conffiles == ["/etc/noderouter/node.yaml.example",
                         "/etc/cni/net.d/10-noderouter.conflist.example"]
    depends = sh(["dpkg-deb", "-f", debs["first"], "Depends"]).stdout
    assert "python3.11" in depends and "pypy3" in depends


def test_lintian_clean(debs):
    res = sh(["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0",
              debs["first"]], timeout=900)
    tags = [line for line in res.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert tags == [] and res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]


@pytest.fixture
def root():
    r = ThrowawayRoot().start()
    try:
        yield r
    finally:
        r.stop()


def test_install_upgrade_run_in_the_lab_and_purge(debs, root, monkeypatch):
    for var in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE"):
        monkeypatch.delenv(var, raising=False)
    res = root.run(["dpkg", "-i", debs["first"]], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr

    # The commands on the PATH run the package's venv, with ExaBGP under PyPy by default.
    assert root.run(["noderouter", "--version"], check=True).stdout.strip() == \
        f"noderouter, version {debs['version'].rsplit('-', 1)[0]}"
    probe = root.run([f"{VENV}/bin/python", "-c", "import bgpd; "
                      "from bgpd.bgp.speaker import default_exabgp; "
                      "print(bgpd.__file__); print(default_exabgp())"], check=True)
    assert probe.stdout.split() == [f"{VENV}/lib/python3.11/site-packages/bgpd/__init__.py",
                                    f"{VENV}/exabgp-pypy/bin/exabgp"]
    assert "ExaBGP : " in root.run([f"{VENV}/bin/exabgp", "version"], check=True).stdout
    # The unit's paths exist in this root: systemd's own checker accepts it.
    res = root.run(["systemd-analyze", "verify", UNIT])
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    # The machine itself got nothing.
    assert not os.path.exists(VENV) and not os.path.lexists("/usr/bin/noderouter")

    # Upgrade: a newer version over the installed one; every file verifies afterwards.
    res = root.run(["dpkg", "-i", debs["second"]], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert root.run(["dpkg-query", "-W", "-f", "${Version}", "noderouter"]).stdout == \
        debs["upgrade_version"]
    verify = root.run(["dpkg", "--verify", "noderouter"])
    assert verify.returncode == 0 and verify.stdout == "", verify.stdout

    # The installed daemon and CNI plugin run the lab's nodes (one per rack).
    lab = Lab(design="tor", racks=2, nodes_per_rack=1, bin_dir="/usr/bin",
              exec_wrapper=(*root.wrapper, *CLEAN_ENV))
    try:
        lab.up()
        lab.start_all(wait=True)
        a = lab.add_pod("node-a1", "p1")
        b = lab.add_pod("node-b1", "p1")
        assert lab.ping(a["netns"], b["ip"], count=3, timeout=2)
        assert lab.ping(b["netns"], a["ip"], count=3, timeout=2)
        st = lab.status("node-a1")
        with open(f"/proc/{lab.daemons['node-a1'].pid}/cmdline", "rb") as f:
            daemon_argv = f.read().split(b"\0")
        assert daemon_argv[0].decode().startswith(f"{VENV}/bin/python"), daemon_argv
        with open(f"/proc/{st['exabgp_pid']}/cmdline", "rb") as f:
            exabgp_argv = f.read().decode()
        assert f"{VENV}/exabgp-pypy/bin/" in exabgp_argv, exabgp_argv
        # The installed doctor, with the packaged defaults (/opt/cni/bin, /etc/cni/net.d):
        # everything passes but the CNI config, which ships as an example only.
        res = lab.nr("node-a1", "doctor", "--config",
                     os.path.join(lab.node_dir("node-a1"), "node.yaml"), "-o", "json")
        checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
        assert [n for n, c in checks.items() if c["status"] == "FAIL"] == ["cni config"]
        assert res.returncode == 1
        assert checks["cni plugin"]["detail"] == "/opt/cni/bin/noderouter-cni is executable"
        assert checks["exabgp"]["detail"].startswith(f"{VENV}/exabgp-pypy/bin/exabgp: ExaBGP ")
        lab.del_pod("node-a1", "p1")
        lab.del_pod("node-b1", "p1")
    finally:
        errors = lab.down()
    assert not errors, errors

    # Purge: nothing of ours is left in the root, nor in what it wrote.
    res = root.run(["dpkg", "--purge", "noderouter"], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert root.run(["dpkg-query", "-W", "noderouter"]).returncode != 0
    left = [p for p in OURS if root.exists(p)]
    assert left == []
    written = []
    for d in ("/usr", "/etc", "/opt", "/var"):
        for dirpath, dirnames, filenames in os.walk(root.upper(d)):
            if dirpath.startswith(root.upper("/var/cache/man")):
                # man-db's cache of formatted pages: `systemd-analyze verify` ran `man
                # noderouter` above (Documentation=). man-db owns it and its daily mandb
                # run drops pages whose source is gone; no package purges that cache.
                continue
            written += [os.path.join(dirpath, n) for n in dirnames + filenames
                        if "noderouter" in n.lower()]
    assert written == []
