"""A throwaway root for installing the Debian package without touching this machine.

A private mount namespace, held open by one ``sleep`` process, in which /usr, /etc, /opt
and /var are overlays of this machine's directories: dpkg sees the machine's package
database (so python3.11, pypy3... satisfy the dependencies) and writes only into the
overlays' upper directories under a temporary directory. The machine's own /usr, /etc,
/opt, /var and systemd are never written. The namespace is a slave of the machine's
mounts, so network namespaces that the lab creates later (/run/netns) are seen in it.

Commands run in it through ``wrapper`` (``nsenter --mount=...``); killing the holder
ends the namespace and its overlays.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

OVERLAID = ("/usr", "/etc", "/opt", "/var")


class ThrowawayRoot:
    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="noderouter-throwaway-")
        self.holder: subprocess.Popen | None = None

    def start(self) -> ThrowawayRoot:
        self.holder = subprocess.Popen(["unshare", "--mount", "--propagation", "slave",
                                        "sleep", "infinity"])
        mine = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{self.holder.pid}/ns/mnt") == mine:
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RuntimeError("unshare --mount did not make a mount namespace")
            time.sleep(0.02)
        for d in OVERLAID:
            name = d.strip("/")
            upper, work = self.upper(d), os.path.join(self.base, "work", name)
            os.makedirs(upper)
            os.makedirs(work)
            self.run(["mount", "-t", "overlay", "overlay", "-o",
                      f"lowerdir={d},upperdir={upper},workdir={work}", d], check=True)
        return self

    def upper(self, d: str) -> str:
        """Where the namespace's writes below ``d`` land (visible from the machine)."""
        return os.path.join(self.base, "upper", d.strip("/"))

    @property
    def wrapper(self) -> tuple[str, ...]:
        assert self.holder is not None
        return ("nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--")

    def run(self, argv, check: bool = False, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.wrapper, *argv], capture_output=True, text=True,
                             timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in the throwaway root failed "
                                 f"({res.returncode}): {res.stdout}{res.stderr}")
        return res

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).returncode == 0 or \
            self.run(["test", "-L", path]).returncode == 0

    def stop(self) -> None:
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait(10)
            self.holder = None
        shutil.rmtree(self.base, ignore_errors=True)
