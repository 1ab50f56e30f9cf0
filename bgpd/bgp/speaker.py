"""The BGP speaker: ExaBGP supervised as a child process, wired to ``SpeakerCore``.

Public API (what the node daemon calls)::

    sp = Speaker(config, policy, run_dir="/run/noderouter/bgp", netns=None,
                 on_change=wake_event.set)          # called (cheaply) when routes/status change
    sp.start()                                      # socket, config file, ExaBGP child, threads
    sp.set_desired({"198.19.1.0/26", ...})          # owned blocks + borrowed /32s, next-hop self
    sp.set_desired(prefixes, complete=True)         # ... computed from a full sync: EoR may go
    sp.mark_announcements_complete()                # (the same, without a new set)
    sp.set_policy(policy)                           # e.g. after claiming/releasing a block
    sp.update_config(new_config)                    # peers added/removed: ExaBGP ``reload``
    changes = sp.take_route_changes()               # {prefix: Route | None} for the dataplane
    sp.routes(); sp.status(); sp.counters()         # RIB, [PeerStatus], {name: int}
    sp.peer_counters()                              # {peer: PeerCounts}, monotonic (metrics)
    sp.stop(withdraw=True)                          # deliberate stop (see below)
    sp.stop(withdraw=False)                         # restart/upgrade: peers keep routes (GR)

Threads and why:
- ``accept``/``reader``: one per ExaBGP instance; reads the relay's socket, parses each line
  once and applies it to the core under a lock. It never waits on netlink or etcd: route
  changes are only recorded; the daemon drains them with ``take_route_changes()`` after
  ``on_change`` woke it. The relay (``bgpd/bgp/exabgp_relay.py``) itself buffers in memory, so
  ExaBGP's pipe is drained even if this process is slow.
- ``writer``: sends queued command lines; every line gets exactly one ``done``/``error``
  which the reader pairs with it (FIFO); errors are logged with the command and counted.
- ``supervisor``: starts ExaBGP, restarts it with exponential backoff when it dies
  (``session_reset`` in the core: routes held per graceful restart, never removed from the
  kernel by the death itself), runs ``core.tick(now)`` for GR expiry.

Deliberate stop: ExaBGP 5.0.15 never sends a Cease when graceful restart was negotiated
(reactor/peer.py closes silently) and SIGTERM closes TCP without NOTIFICATION, so a Cease is
not feasible without dropping GR. ``stop(withdraw=True)`` therefore withdraws everything we
announce, waits until ExaBGP's adj-rib-out is empty (the withdraws are out), then tears the
sessions down and terminates ExaBGP: peers lose our routes at once instead of keeping them
stale for the restart time.

Teardowns the core decides (max-prefix: Cease 1; a peer removed from the config: Cease 3)
follow the same rule per peer (``_carry_out_teardown``): withdraw what we announce to it
when ExaBGP would close silently, wait until those UPDATEs are out, then ``teardown``.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import structlog

from bgpd.bgp import exabgp_commands as cmds
from bgpd.bgp.core import SpeakerCore, Teardown
from bgpd.bgp.errors import BgpError
from bgpd.bgp.events import (
    Ack,
    Answer,
    RelayHello,
)
from bgpd.bgp.exabgp_config import SpeakerConfig, environment, render
from bgpd.bgp.exabgp_launch import NLRI_ENV
from bgpd.bgp.exabgp_lines import parse_line
from bgpd.bgp.import_policy import ImportPolicy
from bgpd.bgp.peers import PeerCounts, PeerStatus
from bgpd.bgp.rib import Route

log = structlog.get_logger("bgpd.bgp.speaker")

RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exabgp_relay.py")
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exabgp_launch.py")


PYPY_VENV = "exabgp-pypy"  # inside our venv; scripts/setup installs the pinned ExaBGP there


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def default_exabgp(prefix: str | None = None, executable: str | None = None,
                   path: str | None = None) -> str:
    """The ExaBGP executable the speaker runs when the config names none, in this order:

    1. ``<prefix>/exabgp-pypy/bin/exabgp``: ExaBGP under PyPy (``scripts/setup``), the
       project's fixed default (the brief: "ExaBGP ... under PyPy by default");
    2. ``exabgp`` next to our interpreter: the CPython install from setup.cfg (fallback, and
       what ``bgp.exabgp_path`` selects for a small node). Both run through
       ``exabgp_launch.py``, which skips ExaBGP's per-prefix NLRI objects. Measured at 100k
       routes (bench/bench_footprint.py, issue 17): CPython + launcher 30 MB RSS and
       0.31-0.62 s CPU; PyPy ~93 MB before any route (its own library keeps ~50 MB resident).
    3. ``exabgp`` on ``path`` (default: $PATH).

    ``prefix``/``executable`` default to ``sys.prefix``/``sys.executable`` (our venv).
    """
    prefix = sys.prefix if prefix is None else prefix
    executable = sys.executable if executable is None else executable
    for cand in (os.path.join(prefix, PYPY_VENV, "bin", "exabgp"),
                 os.path.join(os.path.dirname(executable), "exabgp")):
        if _is_executable_file(cand):
            return cand
    return shutil.which("exabgp", path=path) or "exabgp"


def exabgp_interpreter(exabgp: str) -> str:
    """The interpreter named by the ``#!`` line of an ExaBGP script ("" if none/unreadable).

    ``/usr/bin/env NAME`` is resolved on $PATH. Used to log what runs ExaBGP and to decide
    whether PyPy's GC settings apply.
    """
    try:
        with open(shutil.which(exabgp) or exabgp, "rb") as f:
            first = f.readline(512)
    except OSError:
        return ""
    if not first.startswith(b"#!"):
        return ""
    words = first[2:].decode(errors="replace").split()
    if not words:
        return ""
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return (shutil.which(rest[0]) or rest[0]) if rest else ""
    return words[0]


def is_pypy(interpreter: str) -> bool:
    if not interpreter:
        return False  # (realpath("") would be the current directory)
    return any(os.path.basename(p).startswith("pypy")
               for p in (interpreter, os.path.realpath(interpreter)))


# PyPy's GC settings for ExaBGP (read by PyPy at startup; see PyPy's gc_info docs).
# PyPy sizes its nursery at half the "cache size" in /proc/cpuinfo when that is over 8 MB
# (rpython/memory/gc/env.py), else 4 MB. That line is usually the L3 cache: this 2-core VM
# reports 260 MB, so the nursery was 130 MB and ExaBGP's RSS 216-218 MB from the first
# minute (0 routes or 100k). 4 MB, PyPy's own fallback, measured with
# `bench.bench_bgp --routes 100000 --rounds 3 --gc-threshold 100000`, 9-12 rounds each:
# RSS 102-107 MB (RssAnon ~58 MB, the rest the shared libpypy mapping), ExaBGP CPU
# 0.54-1.17 s vs 0.58-1.05 s with PyPy's default (no loss; CPython: 1.02-1.85 s, 30 MB).
# Also tried: nursery 1-2 MB, PYPY_GC_MIN=8MB, PYPY_GC_MAJOR_COLLECT=1.3, MAX_DELTA=8-16MB:
# at most ~10 MB less RSS, no CPU gain, so not used.
PYPY_GC_ENV = {
    "PYPY_GC_NURSERY": "4MB",
}


def spawn_environment(environ: Mapping[str, str], interpreter: str,
                      settings: Mapping[str, str]) -> dict[str, str]:
    """ExaBGP's environment: ours, PyPy's GC settings when PyPy runs it (a value already in
    our environment wins), then ExaBGP's settings (``exabgp_config.environment``)."""
    env = dict(environ)
    if is_pypy(interpreter):
        for key, value in PYPY_GC_ENV.items():
            env.setdefault(key, value)
    env.update(settings)
    return env


def exabgp_argv(exabgp: str, interpreter: str, conf_path: str) -> list[str]:
    """How ExaBGP is started: through our launcher (``exabgp_launch.py``) in the interpreter
    of the ``exabgp`` script when its ``#!`` line names one (that interpreter's
    site-packages hold ExaBGP), else the script itself."""
    if interpreter:
        return [interpreter, LAUNCHER, conf_path]
    return [exabgp, conf_path]


def nlri_mode(config: SpeakerConfig) -> str:
    """``validate``: ExaBGP checks received NLRI but builds no per-prefix objects, which
    only its adj-rib-in and its parsed JSON would read (``exabgp_launch.py``)."""
    return "validate" if config.api_receive == ("packets",) and not config.adj_rib_in \
        else "decode"


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that spawned it dies.

    A daemon killed with SIGKILL runs no cleanup; without this its ExaBGP would live on,
    keep port 179 and the sessions, and the restarted daemon's ExaBGP could not bind.
    SIGTERM (not KILL) so ExaBGP closes its sessions and peers keep our routes (GR).
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SpeakerError(BgpError, RuntimeError):
    """The speaker could not start or talk to ExaBGP."""


@dataclass
class _Pending:
    line: str
    answers: list[str]
    done: threading.Event
    ok: bool | None = None


class Speaker:
    def __init__(self, config: SpeakerConfig, policy: ImportPolicy, run_dir: str,
                 netns: str | None = None, exabgp: str | None = None,
                 on_change: Callable[[], None] | None = None,
                 backoff: tuple[float, float] = (0.5, 30.0),
                 clock: Callable[[], float] = time.monotonic,
                 trace_path: str | None = None) -> None:
        self.run_dir = run_dir
        self.netns = netns
        self.exabgp = exabgp or default_exabgp()
        self.exabgp_interpreter = exabgp_interpreter(self.exabgp)  # re-read at each spawn
        self.on_change = on_change or (lambda: None)
        self.backoff = backoff
        self.clock = clock
        self.trace_path = trace_path  # every raw line from ExaBGP appended here (debugging)
        self.sock_path = os.path.join(run_dir, "api.sock")
        self.conf_path = os.path.join(run_dir, "exabgp.conf")
        self.log_path = os.path.join(run_dir, "exabgp.log")
        config = self._with_api(config)
        self.core = SpeakerCore(config, policy)
        self.lock = threading.RLock()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._config_gen = 0      # bumped on every config file write
        self._spawned_gen = 0     # the generation the running ExaBGP was started with
        self._stopping = threading.Event()
        self._conn: socket.socket | None = None
        self._conn_ready = threading.Event()
        self._relay_lost = threading.Event()
        self._outq: collections.deque[_Pending | None] = collections.deque()
        self._outcv = threading.Condition()
        self._inflight: collections.deque[_Pending] = collections.deque()
        self._srv: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.log = log.bind(router_id=config.router_id, local_as=config.local_as)

    def _with_api(self, config: SpeakerConfig) -> SpeakerConfig:
        from dataclasses import replace

        return replace(config, api_argv=(sys.executable, RELAY, self.sock_path))

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> Speaker:
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        if os.path.exists(self.sock_path):
            os.unlink(self.sock_path)
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.sock_path)
        os.chmod(self.sock_path, 0o600)
        self._srv.listen(4)
        self._write_config(self.core.config)
        for target, name in ((self._accept_loop, "bgp-accept"), (self._writer_loop, "bgp-writer"),
                             (self._supervise, "bgp-supervisor")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, withdraw: bool = True, timeout: float = 10.0) -> None:
        """Stop ExaBGP (and our threads). ``withdraw``: peers drop our routes now (see module doc)."""
        if self._stopping.is_set():
            return
        if withdraw and self.proc and self.proc.poll() is None and self._conn_ready.is_set():
            try:
                self._deliberate_withdraw(timeout)
            except Exception as exc:  # noqa: BLE001 - best effort; we stop anyway
                self.log.warning("withdraw_before_stop_failed", error=str(exc))
        self._stopping.set()
        self._terminate_exabgp(timeout)
        with self._outcv:
            self._outq.append(None)
            self._outcv.notify()
        self._drop_connection()
        if self._srv is not None:
            try:
                self._srv.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._srv.close()
        for t in self._threads:
            t.join(timeout=5)
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass
        self.log.info("speaker_stopped", withdrew=withdraw)

    def _deliberate_withdraw(self, timeout: float) -> None:
        with self.lock:
            established = [s.address for s in self.core.status(self.clock())
                           if s.state in ("established", "max-prefix")]
            if self.core.desired:
                self.core.set_desired(())
            lines = self.core.take_commands()
        pend = [self._send(line) for line in lines]
        deadline = time.monotonic() + timeout
        for p in pend:
            p.done.wait(max(0.0, deadline - time.monotonic()))
        # The withdraws are out once ExaBGP's adj-rib-out holds no route any more.
        while time.monotonic() < deadline:
            p = self._send("show adj-rib out")
            if not p.done.wait(max(0.1, deadline - time.monotonic())):
                break
            if not any("/" in a for a in p.answers):
                break
            time.sleep(0.1)
        teardowns = [self._send(cmds.teardown(peer, 2)) for peer in established]
        for p in teardowns:
            p.done.wait(max(0.0, deadline - time.monotonic()))

    def _terminate_exabgp(self, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass

    def _write_config(self, config: SpeakerConfig) -> None:
        # 0600: the file holds the peers' TCP MD5 passwords, and run_dir's 0700 only holds
        # when we created it (makedirs ignores mode for an existing dir, e.g. a systemd
        # RuntimeDirectory made 0755).
        tmp = self.conf_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover tmp keeps its old mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            f.write(render(config))
        os.replace(tmp, self.conf_path)
        self._config_gen += 1

    def _spawn(self) -> subprocess.Popen:
        env = spawn_environment(os.environ, self.exabgp_interpreter,
                                environment(self.core.config, self.run_dir))
        if env.get(NLRI_ENV) != "decode":  # an operator's opt-out wins (ExaBGP as shipped)
            env[NLRI_ENV] = nlri_mode(self.core.config)
        argv = exabgp_argv(self.exabgp, self.exabgp_interpreter, self.conf_path)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        out = open(self.log_path, "ab")
        try:
            # start_new_session: a terminal's Ctrl-C reaches the daemon, which stops ExaBGP.
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        finally:
            out.close()

    def _supervise(self) -> None:
        delay = self.backoff[0]
        while not self._stopping.is_set():
            self._conn_ready.clear()
            self._relay_lost.clear()
            started = time.monotonic()
            with self.lock:
                self._spawned_gen = self._config_gen
                self.exabgp_interpreter = exabgp_interpreter(self.exabgp)
                self.proc = self._spawn()
                self.starts += 1
            self.log.info("exabgp_started", pid=self.proc.pid, start=self.starts,
                          exabgp=self.exabgp, interpreter=self.exabgp_interpreter)
            while not self._stopping.is_set():
                if self.proc.poll() is not None:
                    break
                if self._relay_lost.is_set():
                    # ExaBGP 5.0.15 carries on without its API process (no respawn here, and
                    # api.terminate did not reliably end it); a respawned relay would get no
                    # replay anyway. Restart the pair: peers hold our routes (GR).
                    self.log.warning("relay_lost_restarting_exabgp", pid=self.proc.pid)
                    self._terminate_exabgp(5.0)
                    break
                with self.lock:
                    self.core.tick(self.clock())
                self._flush_commands()
                self._stopping.wait(0.2)
            if self._stopping.is_set():
                return
            rc = self.proc.returncode
            with self.lock:
                self.core.session_reset(self.clock())
            self._drop_connection()
            self.log.warning("exabgp_exited", pid=self.proc.pid, returncode=rc,
                             restart_in=delay)
            self.on_change()
            delay = self.backoff[0] if time.monotonic() - started > 60 else delay
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])

    # -- socket side -----------------------------------------------------------
    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._conn_ready.clear()
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in readline
            except OSError:
                pass
            conn.close()
        # Commands in flight die with the connection: fail them so nobody waits forever.
        with self._outcv:
            while self._inflight:
                p = self._inflight.popleft()
                p.ok = False
                p.done.set()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            if self._conn is not None:
                self.log.warning("second_relay_connection", action="replacing")
                self._drop_connection()
            self._conn = conn
            threading.Thread(target=self._reader, args=(conn,), name="bgp-reader",
                             daemon=True).start()

    def _reader(self, conn: socket.socket) -> None:
        f = conn.makefile("rb", buffering=1 << 20)
        trace = open(self.trace_path, "ab") if self.trace_path else None
        for raw in iter(f.readline, b""):
            if trace is not None:
                trace.write(raw)
                trace.flush()
            ev = parse_line(raw)
            if isinstance(ev, RelayHello):
                self.log.info("relay_connected", hello=ev.text)
                with self.lock:
                    # Anything announced before this connection is lost with the old ExaBGP;
                    # peers coming up will get the full desired set.
                    self.core.take_commands()
                    # The config changed after this ExaBGP was spawned (peers from the
                    # registry arrive while it starts): it may have parsed the old file, and
                    # update_config() could not reload it before the API was connected.
                    stale_config = self._config_gen != self._spawned_gen
                    self._spawned_gen = self._config_gen
                self._conn_ready.set()
                if stale_config:
                    self.log.info("config_changed_during_start_reloading")
                    self._send(cmds.RELOAD)
                continue
            if isinstance(ev, Ack):
                self._ack(ev.ok)
            elif isinstance(ev, Answer):
                with self._outcv:
                    if self._inflight:
                        self._inflight[0].answers.append(ev.text)
            with self.lock:
                try:
                    self.core.apply(ev, self.clock())
                except Exception:  # noqa: BLE001 - one bad event must not deafen BGP
                    # The reader is the only thread draining ExaBGP: if it died, sessions
                    # would stay up while nothing is learned. Log, count, keep reading.
                    self.core.counters["apply_errors"] = \
                        self.core.counters.get("apply_errors", 0) + 1
                    self.log.exception("event_apply_failed", event=type(ev).__name__)
                has_cmds = self.core.has_commands()
            if has_cmds:
                self._flush_commands()
            if not isinstance(ev, (Ack, Answer)):
                self.on_change()
        if trace is not None:
            trace.close()
        if conn is self._conn and not self._stopping.is_set():
            self.log.warning("relay_disconnected")
            self._relay_lost.set()

    def _ack(self, ok: bool) -> None:
        with self._outcv:
            if not self._inflight:
                self.log.warning("unexpected_ack", ok=ok)
                return
            p = self._inflight.popleft()
        p.ok = ok
        if not ok:
            self.log.warning("command_failed", command=p.line[:160])
        p.done.set()

    def _send(self, line: str) -> _Pending:
        if "\n" in line or "\r" in line:
            raise SpeakerError(f"refusing command with a line break: {line[:80]!r}")
        p = _Pending(line, [], threading.Event())
        with self._outcv:
            self._outq.append(p)
            self._outcv.notify()
        return p

    def _flush_commands(self) -> None:
        if not self._conn_ready.is_set():
            return
        with self.lock:
            lines = self.core.take_commands()
            teardowns = self.core.take_teardowns()
        for line in lines:
            self._send(line)
        for td in teardowns:
            # Its own thread: it waits for acks, which only the reader thread (which may
            # be the caller) can deliver.
            threading.Thread(target=self._carry_out_teardown, args=(td,),
                             name="bgp-teardown", daemon=True).start()

    def _updates_sent(self, peer: str, deadline: float) -> int | None:
        p = self._send(cmds.SHOW_NEIGHBORS_JSON)
        if not p.done.wait(max(0.0, deadline - time.monotonic())) or not p.ok:
            return None
        return cmds.updates_sent(p.answers, peer)

    def _carry_out_teardown(self, td: Teardown, timeout: float = 5.0) -> bool:
        """Withdraw ``td.withdraw`` from the peer, then ``teardown`` with its Cease subcode.

        An ack only says ExaBGP queued the withdraws in the neighbour's adj-rib-out; its
        peer loop sends them on a later reactor turn, and it stops sending as soon as a
        teardown is flagged (reactor/peer.py ``_main`` leaves its loop), so we wait until
        ExaBGP's count of UPDATEs sent to the peer moved (``show neighbor json``) before
        the teardown. Returns whether ExaBGP acknowledged the teardown.
        """
        deadline = time.monotonic() + timeout
        if td.withdraw:
            before = self._updates_sent(td.peer, deadline)
            pend = [self._send(line) for line in td.withdraw]
            for p in pend:
                p.done.wait(max(0.0, deadline - time.monotonic()))
            sent = before
            while before is not None and time.monotonic() < deadline:
                sent = self._updates_sent(td.peer, deadline)
                if sent is None or sent > before:
                    break
                time.sleep(0.1)
            if before is None or sent is None or sent <= before:
                self.log.warning("teardown_withdraw_unconfirmed", peer=td.peer,
                                 subcode=td.subcode, updates_before=before, updates_now=sent)
        p = self._send(cmds.teardown(td.peer, td.subcode))
        ok = p.done.wait(max(0.1, deadline - time.monotonic())) and bool(p.ok)
        self.log.info("teardown_sent", peer=td.peer, cease_subcode=td.subcode,
                      withdrew=len(td.withdraw), ok=ok)
        return ok

    def _writer_loop(self) -> None:
        while True:
            with self._outcv:
                while not self._outq:
                    self._outcv.wait()
                p = self._outq.popleft()
                if p is None:
                    return
                conn = self._conn
                if conn is None or not self._conn_ready.is_set():
                    p.ok = False
                    p.done.set()
                    continue
                self._inflight.append(p)
            try:
                conn.sendall((p.line + "\n").encode())
            except OSError as exc:
                self.log.warning("command_send_failed", error=str(exc), command=p.line[:80])

    # -- public API --------------------------------------------------------------
    def command(self, line: str, timeout: float = 10.0) -> tuple[bool, list[str]]:
        """Send one raw ExaBGP command, wait for its ack: (ok, answer lines)."""
        p = self._send(line)
        if not p.done.wait(timeout):
            raise SpeakerError(f"no ack from ExaBGP for {line[:60]!r} within {timeout}s")
        return bool(p.ok), p.answers

    def set_desired(self, prefixes: Iterable[str], complete: bool = False) -> None:
        """``complete``: the set comes from the node's full sync; until the first call
        with it (or ``mark_announcements_complete``) no peer gets End-of-RIB (issue 18)."""
        with self.lock:
            self.core.set_desired(prefixes, complete=complete)
        self._flush_commands()

    def mark_announcements_complete(self) -> None:
        with self.lock:
            self.core.mark_announcements_complete()
        self._flush_commands()

    def set_policy(self, policy: ImportPolicy) -> None:
        with self.lock:
            self.core.set_policy(policy, self.clock())
        self.on_change()

    def update_config(self, config: SpeakerConfig, timeout: float = 10.0) -> None:
        """Apply a new peer set without restarting: rewrite the file, ExaBGP ``reload``.

        ExaBGP's reload keeps sessions whose neighbour definition is unchanged, starts new
        ones, removes deleted ones and re-establishes modified ones (reactor/loop.py). Its
        removal closes TCP without a NOTIFICATION, so a removed peer with a session gets
        its Cease "Peer De-configured" first (``SpeakerCore.deconfigure``) and we wait until
        that session is down before the reload.
        """
        config = self._with_api(config)
        with self.lock:
            teardowns = self.core.deconfigure(config)
        if teardowns and self._conn_ready.is_set():
            deadline = time.monotonic() + timeout
            for td in teardowns:
                self._carry_out_teardown(td, max(0.1, deadline - time.monotonic()))
            gone = {td.peer for td in teardowns}
            while time.monotonic() < deadline and any(
                    s.address in gone and s.state in ("established", "max-prefix")
                    for s in self.status()):
                time.sleep(0.05)
        self._write_config(config)
        with self.lock:
            self.core.set_config(config, self.clock())
        if self._conn_ready.is_set():
            ok, _ = self.command(cmds.RELOAD, timeout)
            if not ok:
                raise SpeakerError("ExaBGP refused to reload its configuration; "
                                   f"see {self.log_path}")
        self.on_change()

    def take_route_changes(self) -> dict[str, Route | None]:
        with self.lock:
            return self.core.take_route_changes()

    def routes(self) -> Mapping[str, Route]:
        with self.lock:
            return self.core.routes()

    def status(self) -> list[PeerStatus]:
        with self.lock:
            return self.core.status(self.clock())

    def peer(self, address: str) -> PeerStatus | None:
        return next((s for s in self.status() if s.address == address), None)

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self.core.counters, exabgp_starts=self.starts)

    def peer_counters(self) -> dict[str, PeerCounts]:
        """Per peer address: ``received`` prefixes and ``rejected`` by reason since this
        speaker was made; monotonic (flaps, ExaBGP restarts and config changes never lower
        them), for export as Prometheus counters."""
        with self.lock:
            return self.core.peer_counters()

    @property
    def exabgp_pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def ready(self) -> bool:
        return self._conn_ready.is_set()
