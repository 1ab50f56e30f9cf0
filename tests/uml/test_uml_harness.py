"""lab/uml.py itself: the command channel is exact and the guest cannot write the host."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.uml]


def test_exit_code_stdout_and_stderr_come_back_separately(uml_kernel):
    res = uml_kernel.run("printf 'out\\n'; printf 'err\\n' >&2; exit 7")
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")


def test_argv_form_is_quoted(uml_kernel):
    res = uml_kernel.run(["printf", "%s|", "a b", "$HOME", "'q'"], check=True)
    assert res.stdout == "a b|$HOME|'q'|"


def test_guest_timeout_is_reported_and_the_kernel_keeps_answering(uml_kernel):
    res = uml_kernel.run("sleep 30", timeout=1)
    assert res.returncode == 124  # coreutils timeout's status
    assert uml_kernel.run("echo still-here", check=True).stdout == "still-here\n"


def test_host_root_is_read_only_inside_the_guest(uml_kernel):
    res = uml_kernel.run("touch /usr/noderouter-uml-write-probe")
    assert res.returncode != 0
    assert "Read-only file system" in res.stderr


def test_scratch_is_shared_read_write(uml_kernel):
    probe = uml_kernel.scratch / "out" / "shared-probe.txt"
    uml_kernel.run(["sh", "-c", f"echo from-guest > {probe}"], check=True)
    assert probe.read_text() == "from-guest\n"


def test_kernel_module_autoload_uses_the_uml_module_tree(uml_kernel, guest_netns):
    # vxlan is not preloaded: creating one makes the guest kernel call our
    # modprobe wrapper (request_module), which must find the UML modules.
    ns = guest_netns.add("vx")
    uml_kernel.run(
        ["ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789"],
        check=True,
    )
    assert "vxlan id 42" in uml_kernel.run(["ip", "-n", ns, "-d", "link", "show", "vx0"]).stdout
