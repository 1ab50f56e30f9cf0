"""The root-namespace guard catches a leak (proven inside a throwaway namespace)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kernel


def test_guard_fails_a_session_that_leaks(netns, tmp_path):
    # An inner pytest session whose guard watches `netns` instead of the root
    # namespace; its one test "leaks" a route into that namespace.
    leaky = tmp_path / "test_leaky.py"
    leaky.write_text(textwrap.dedent(f"""
        import subprocess
        def test_leak():
            subprocess.run(["ip", "netns", "exec", "{netns}", "ip", "route", "add",
                            "blackhole", "198.18.250.0/24"], check=True)
    """))
    conftest = tmp_path / "conftest.py"
    conftest.write_text(open("tests/conftest.py").read())
    env = {"NODEROUTER_GUARD_NETNS": netns, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          str(leaky)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "ROOT-NAMESPACE GUARD" in res.stdout
    assert "198.18.250.0/24" in res.stdout


def test_guard_passes_a_clean_session(netns, tmp_path):
    clean = tmp_path / "test_clean.py"
    clean.write_text("def test_nothing():\n    assert 1 + 1 == 2\n")
    (tmp_path / "conftest.py").write_text(open("tests/conftest.py").read())
    env = {"NODEROUTER_GUARD_NETNS": netns, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          str(clean)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ROOT-NAMESPACE GUARD" not in res.stdout
