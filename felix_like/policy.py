"""PolicyManager: keeps the node's ``table inet noderouter`` equal to the policy plan.

Felix pattern: ``on_update(msg)`` only records (a NetworkPolicy, Namespace or
WorkloadEndpoint upserts; ``Removed`` deletes) and marks dirty;
``complete_deferred_work(now)`` takes the plan (``policy_incremental``: the pure
calculation's result, kept up to date per update) and applies it with one
``nft -f -`` inside the node's network namespace:

- incremental normally: the differences between the applied plan and the new
  one — set elements, map entries, chains and sets that appear, change or go —
  in one transaction (``policy_nft.render_update``), so one new pod or one label
  change never rewrites the table (kube-router rebuilds everything each time);
- after a change, established flows the new plan denies are cut: their
  conntrack entries are deleted, so the next packet is a new connection that
  meets the policy (Kubernetes leaves this to the implementation,
  kubernetes/website#43438; Calico users ask for it, projectcalico/calico#2759).
  Flows still allowed keep their entries. A drift repair cuts too (the drifted
  kernel may have admitted what the plan denies);
- full replace of our table on the first run, every
  ``resync_interval`` seconds (Felix refreshes every 180 s), after any error,
  and when a drift check (every ``drift_check_interval``) finds the kernel's
  chains differ from ours (a hand-flushed or deleted chain, a deleted table). The
  table is listed only when the nftables ruleset generation moved since our table
  was last known intact (our own apply, or a check that found it so): listing it
  costs seconds at 1,000 pods x 1,000 policies, reading the generation microseconds.

Metrics (``stats()``): packets and bytes denied per policy and direction, read from
the drop rules' counters (``policy_counters``) every ``counter_read_interval`` and
right before an apply that replaces rules; rules and sets in the table; the last
apply's duration and the number of applies of each kind.

nft applies a script whole or not at all, so a failed apply leaves the previous
ruleset in place; the manager then forgets what it applied and replaces the whole
table next time. ``now`` is a parameter: only the caller reads the clock.
"""

from __future__ import annotations

import errno
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import structlog

from felix_like.errors import DataplaneError
from felix_like.policy_calc import PolicyPlan, plan_allows
from felix_like.policy_counters import DenyCounters, DenyKey, attribution, parse_drop_counters
from felix_like.policy_incremental import IncrementalPolicyCalculator
from felix_like.policy_model import Namespace, NetworkPolicy, Resource, WorkloadEndpoint
from felix_like.policy_nft import (
    TABLE,
    WORKLOAD_PREFIX,
    render_full,
    render_structure,
    render_update,
    ruleset_size,
)

log = structlog.get_logger("felix_like.policy")

DEFAULT_RESYNC_INTERVAL = 180.0
DEFAULT_DRIFT_CHECK_INTERVAL = 10.0
# How often the drop counters are read (one `nft -j -t list table`): the freshness of
# the denied-packets metrics. Also read right before any apply that replaces rules.
DEFAULT_COUNTER_READ_INTERVAL = 5.0
# Before an incremental apply flushes or deletes chains, their counters are read one
# chain at a time (~70 ms each) up to this many; beyond, the whole table at once.
MAX_CHAINS_READ_ONE_BY_ONE = 8
_REPLACED_CHAIN = re.compile(rf"^(?:flush|delete) chain inet {TABLE} (\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class PolicyStats:
    """What the policy dataplane did, for the node's metrics (a copy: other threads
    may read it)."""

    denied: Mapping[DenyKey, tuple[int, int]] = field(default_factory=dict)  # packets, bytes
    rules: int = 0                 # rules in our table now (0: no table)
    sets: int = 0                  # named sets in our table now
    last_apply_seconds: float = 0.0
    applies: Mapping[str, int] = field(default_factory=dict)    # full | incremental


class PolicyApplyError(DataplaneError, RuntimeError):
    """nft refused our script; nothing of it was applied."""


@dataclass(frozen=True)
class Removed:
    kind: type                  # NetworkPolicy | Namespace | WorkloadEndpoint
    key: object                 # policy key, namespace name, or (node, namespace, pod)


def _key(res: Resource):
    if isinstance(res, Namespace):
        return res.name
    if isinstance(res, WorkloadEndpoint):
        # The node is part of an endpoint's identity here: one (namespace, pod) seen on
        # two nodes (a stale record, or a lab whose pods share names) must not make the
        # live local endpoint vanish -- it would fall to the fail-closed drop.
        return (res.node, *res.key)
    return res.key


# nfnetlink (linux/netfilter/nfnetlink.h, nf_tables.h): the ruleset generation id.
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLMSG_ERROR = 2
_NLMSG = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLA = struct.Struct("=HH")


def parse_generation(reply: bytes) -> int:
    """NFTA_GEN_ID from an NFT_MSG_NEWGEN reply (pure). ValueError names what is wrong."""
    if len(reply) < _NLMSG.size:
        raise ValueError(f"nftables generation reply too short ({len(reply)} bytes)")
    length, msg_type, _, _, _ = _NLMSG.unpack_from(reply)
    if msg_type == NLMSG_ERROR:
        code = struct.unpack_from("=i", reply, _NLMSG.size)[0]
        raise ValueError(f"nftables generation request refused: errno {-code}")
    off = _NLMSG.size + _NFGENMSG.size
    end = min(length, len(reply))
    while off + _NLA.size <= end:
        alen, atype = _NLA.unpack_from(reply, off)
        if alen < _NLA.size:
            break
        if atype & 0x3FFF == NFTA_GEN_ID and alen >= _NLA.size + 4:
            return struct.unpack_from(">I", reply, off + _NLA.size)[0]
        off += (alen + 3) & ~3
    raise ValueError("nftables generation reply carries no NFTA_GEN_ID")


class NftCli:
    """``nft`` inside a network namespace (None = the current one)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._gen_sock: socket.socket | None = None

    def generation(self) -> int | None:
        """The namespace's nftables ruleset generation (NFT_MSG_GETGEN): every
        committed ruleset change, by anyone, increments it; reading does not. None
        when it cannot be read (the caller then lists the table instead).

        The socket is opened once and kept: opening one inside a named namespace
        costs a child process (~20 ms); a request on it costs microseconds."""
        try:
            if self._gen_sock is None:
                self._gen_sock = self._open_netfilter_socket()
            request = (_NLMSG.pack(_NLMSG.size + _NFGENMSG.size,
                                   (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
                                   1, 0, 0)                        # NLM_F_REQUEST
                       + _NFGENMSG.pack(socket.AF_UNSPEC, 0, 0))
            self._gen_sock.send(request)
            return parse_generation(self._gen_sock.recv(4096))
        except (OSError, ValueError) as exc:
            log.warning("nft_generation_unreadable", error=str(exc),
                        effect="the drift check lists the table")
            self.close()
            return None

    def _open_netfilter_socket(self) -> socket.socket:
        if self.netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        else:
            from pyroute2.netns import create_socket

            # flags=0: never create the namespace if it does not exist.
            sock = create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                 NETLINK_NETFILTER, flags=0)
        sock.settimeout(5.0)
        sock.bind((0, 0))
        return sock

    def close(self) -> None:
        if self._gen_sock is not None:
            self._gen_sock.close()
            self._gen_sock = None

    def _argv(self, *args: str) -> list[str]:
        argv = ["nft", *args]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def apply(self, script: str) -> None:
        res = subprocess.run(self._argv("-f", "-"), input=script, capture_output=True, text=True)
        if res.returncode != 0:
            raise PolicyApplyError(f"nft refused the policy script for table inet {TABLE}: "
                                   f"{res.stderr.strip()}")

    def list_table_json(self) -> str | None:
        """The table as nft JSON without set elements (its rules' counters), or None
        when there is no table."""
        res = subprocess.run(self._argv("-j", "-t", "list", "table", "inet", TABLE),
                             capture_output=True, text=True)
        return res.stdout if res.returncode == 0 else None

    def list_chain_json(self, chain: str) -> str | None:
        """One chain of our table as nft JSON (its rules' counters), or None when it
        does not exist."""
        res = subprocess.run(self._argv("-j", "list", "chain", "inet", TABLE, chain),
                             capture_output=True, text=True)
        return res.stdout if res.returncode == 0 else None

    def list_table_terse(self) -> str | None:
        # -t leaves set elements out: cheap even with 100k elements (POLICY.md section 3).
        res = subprocess.run(self._argv("-t", "list", "table", "inet", TABLE),
                             capture_output=True, text=True)
        return res.stdout if res.returncode == 0 else None


_CHAIN = re.compile(r"^\s*chain (\S+) \{$")


def chain_rule_counts(text: str) -> dict[str, int]:
    """Rules per chain in a table listing or in our rendered structure."""
    counts: dict[str, int] = {}
    current = None
    for line in text.splitlines():
        m = _CHAIN.match(line)
        if m:
            current = m.group(1)
            counts[current] = 0
            continue
        stripped = line.strip()
        if current is None:
            continue
        if stripped == "}":
            current = None
        elif stripped and not stripped.startswith(("#", "type filter hook")):
            counts[current] += 1
    return counts


@dataclass(frozen=True)
class Flow:
    saddr: str
    daddr: str
    protocol: int
    dport: int


def denied_flows(plan: PolicyPlan, flows: Iterable[Flow]) -> list[Flow]:
    """The tracked flows touching a local endpoint that ``plan`` would not let start
    (pure). Other flows (no local endpoint, or not TCP/UDP/SCTP) are not ours."""
    local = {ip for ep in plan.endpoints for ip in ep.addresses}
    return [f for f in flows
            if f.protocol in (6, 17, 132) and (f.saddr in local or f.daddr in local)
            and not plan_allows(plan, f.saddr, f.daddr, f.protocol, f.dport)]


class ConntrackCutter:
    """Deletes conntrack entries through ctnetlink inside the node's namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def cut(self, plan: PolicyPlan) -> int:
        from pyroute2 import Conntrack
        from pyroute2.netlink.exceptions import NetlinkError

        ct = Conntrack(netns=self.netns) if self.netns else Conntrack()
        try:
            entries = []
            for entry in ct.dump_entries():
                t = entry.tuple_orig
                if t.saddr is None or t.dport is None:
                    continue
                entries.append((Flow(str(t.saddr), str(t.daddr), t.proto, t.dport), entry))
            doomed = set(denied_flows(plan, [f for f, _ in entries]))
            cut = 0
            for flow, entry in entries:
                if flow in doomed:
                    try:
                        ct.delete(entry)
                        cut += 1
                    except NetlinkError as exc:
                        # pyroute2's NetlinkError is no OSError: ENOENT means the entry
                        # went meanwhile (expired or closed), nothing left to cut. Seen
                        # under load in test_fail_closed_and_node_reaches_pods.
                        if exc.code != errno.ENOENT:
                            raise OSError(exc.code, f"conntrack delete: {exc}") from exc
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:   # gone meanwhile: nothing to cut
                            raise
            return cut
        finally:
            ct.close()


class PolicyManager:
    """The policy manager of one node (``node`` = its name; None = every endpoint is
    local, for tests). Construct with the node's namespace; ``now`` comes from the
    caller's loop."""

    def __init__(self, node: str | None, netns: str | None = None,
                 resync_interval: float = DEFAULT_RESYNC_INTERVAL,
                 drift_check_interval: float = DEFAULT_DRIFT_CHECK_INTERVAL,
                 prefix: str = WORKLOAD_PREFIX,
                 nft: NftCli | None = None, conntrack: ConntrackCutter | None = None,
                 cut_denied_flows: bool = True,
                 counter_read_interval: float = DEFAULT_COUNTER_READ_INTERVAL,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.node = node
        self.prefix = prefix
        self.resync_interval = resync_interval
        self.drift_check_interval = drift_check_interval
        if nft is not None and netns is not None and nft.netns != netns:
            raise ValueError(f"PolicyManager: netns {netns!r} differs from its nft's "
                             f"namespace {nft.netns!r}")
        self.nft = nft or NftCli(netns)
        # The cutter works where the rules are: given only an nft, its namespace. (A
        # manager built with nft=NftCli(ns) and no netns used to cut conntrack in the
        # caller's namespace -- the root one in the kernel tests -- so flows a new
        # ruleset denies survived in the node's table.)
        self.conntrack = conntrack or ConntrackCutter(self.nft.netns)
        self.cut_denied_flows = cut_denied_flows
        self._last_plan: PolicyPlan | None = None
        self._resources: dict[tuple[type, object], Resource] = {}
        self._calc = IncrementalPolicyCalculator(node)
        self._dirty = True
        self._applied: PolicyPlan | None = None
        self._next_resync = 0.0
        self._next_drift_check = 0.0
        # The ruleset generation at which our table was last known to be exactly ours
        # (after our own apply, or a drift check that found it intact); None: unknown.
        self._clean_generation: int | None = None
        self.last_action = ""
        # Metrics: denied packets per policy (from the drop rules' counters), the
        # table's size, how long the last nft apply took and how many of each kind ran.
        self.counter_read_interval = counter_read_interval
        self._next_counter_read = 0.0
        self._timer = timer                 # durations only; ``now`` stays the caller's
        self.deny = DenyCounters()
        # The plan the kernel's table was last loaded from: it names the chains whose
        # counters we read. Kept across queue_resync (which only forgets the plan to
        # diff against) and failed applies (nft applied nothing of them).
        self._in_kernel: PolicyPlan | None = None
        self.rules = self.sets = 0
        self.last_apply_seconds = 0.0
        self.applies = {"full": 0, "incremental": 0}

    # --- recording (no I/O) ---------------------------------------------------------
    def on_update(self, msg: Resource | Removed) -> None:
        calc = self._calc
        if isinstance(msg, Removed):
            remove = {NetworkPolicy: calc.remove_policy, Namespace: calc.remove_namespace,
                      WorkloadEndpoint: calc.remove_endpoint}.get(msg.kind)
            if remove is None:
                raise TypeError(f"PolicyManager cannot remove a {msg.kind.__name__}")
            self._resources.pop((msg.kind, msg.key), None)
            remove(msg.key)
        elif isinstance(msg, (NetworkPolicy, Namespace, WorkloadEndpoint)):
            self._resources[(type(msg), _key(msg))] = msg
            if isinstance(msg, NetworkPolicy):
                calc.upsert_policy(msg)
            elif isinstance(msg, Namespace):
                calc.upsert_namespace(msg)
            else:
                calc.upsert_endpoint(msg)
        else:
            raise TypeError(f"PolicyManager cannot handle {type(msg).__name__}")
        self._dirty = True

    def replace_all(self, resources: Iterable[Resource]) -> None:
        """The whole input at once (the daemon hands over every resource on each
        change): applied as the differences from what we hold, so one changed policy
        costs one update, not a recalculation. The last record of a key wins."""
        latest = {(type(r), _key(r)): r for r in resources}
        for kind, key in [k for k in self._resources if k not in latest]:
            self.on_update(Removed(kind, key))
        for key, res in latest.items():
            if self._resources.get(key) != res:
                self.on_update(res)
        self._dirty = True

    def queue_resync(self) -> None:
        self._applied = None

    def plan(self) -> PolicyPlan:
        """The plan for the resources recorded so far: ``policy_calc.calculate``'s,
        kept up to date per update (``policy_incremental``)."""
        return self._calc.plan()

    # --- kernel work ----------------------------------------------------------------
    def read_counters(self, chains: Collection[str] | None = None) -> bool:
        """Add what the drop rules counted since the last reading (one nft listing of
        the table, or of each of ``chains``: listing the whole table costs ~1.6 s at
        1,000 pods x 1,000 policies, one chain ~70 ms). Only once we loaded the table
        (its chains name the policies; a table left by an earlier run is replaced
        before it is read); False when nothing was read."""
        if self._in_kernel is None:
            return False
        if chains is not None and len(chains) > MAX_CHAINS_READ_ONE_BY_ONE:
            chains = None
        try:
            if chains is None:
                listing = self.nft.list_table_json()
                if listing is None:
                    return False
                readings = parse_drop_counters(listing)
            else:
                readings = []
                for chain in chains:
                    listing = self.nft.list_chain_json(chain)
                    if listing is not None:          # a chain gone (drift): nothing to read
                        readings.extend(parse_drop_counters(listing))
        except ValueError as exc:
            log.warning("policy_counters_unreadable", error=str(exc))
            return False
        self.deny.absorb(readings, attribution(self._in_kernel), chains)
        return True

    def stats(self) -> PolicyStats:
        return PolicyStats(dict(self.deny.totals), self.rules, self.sets,
                           self.last_apply_seconds, dict(self.applies))

    def _drifted(self, plan: PolicyPlan) -> bool:
        """Does the kernel's table differ from ``plan``'s chains? Listing the table
        costs ~2.5 s at 1,000 pods x 1,000 policies (issue 14), so it is listed only
        when the ruleset generation moved since we last knew the table was ours:
        nobody has committed anything since then, so nothing can have drifted."""
        generation = self.nft.generation()
        if generation is not None and generation == self._clean_generation:
            return False
        listing = self.nft.list_table_terse()
        if listing is None:
            return True
        if chain_rule_counts(listing) != chain_rule_counts(render_structure(plan, self.prefix)):
            return True
        # Read before the listing: a change after it moves the generation again.
        self._clean_generation = generation
        return False

    def _apply(self, script: str) -> None:
        """``nft -f``; records the generation it produced when nobody else committed
        meanwhile (one transaction = exactly one increment). Otherwise the generation
        stays unknown and the next drift check lists the table."""
        before = self.nft.generation()
        self._clean_generation = None
        self.nft.apply(script)
        after = self.nft.generation()
        if before is not None and after == (before + 1) & 0xFFFFFFFF:
            self._clean_generation = after

    def complete_deferred_work(self, now: float) -> str | None:
        """Apply what changed; returns 'full' / 'incremental' / None (nothing to do)."""
        full = self._applied is None or now >= self._next_resync
        drifted = False
        # The periodic counter reading (freshness of the metrics) comes after any
        # apply: a change is enforced first (issue 14: the reading costs seconds).
        counters_due = now >= self._next_counter_read
        if counters_due:
            self._next_counter_read = now + self.counter_read_interval
        if not full and now >= self._next_drift_check:
            self._next_drift_check = now + self.drift_check_interval
            if self._drifted(self._applied):
                log.warning("policy_drift_repaired", table=TABLE)
                full = drifted = True
        if not full and not self._dirty:
            if counters_due:
                self.read_counters()
            return None
        plan = self.plan()
        for conflict in plan.conflicts:
            log.error("policy_endpoint_conflict", problem=conflict,
                      effect="interface left unprogrammed: its traffic is dropped")
        if full:
            script, action = render_full(plan, self.prefix), "full"
        else:
            script, action = render_update(self._applied, plan), "incremental"
        if full:
            # Every rule's counter is about to go: take what they counted first.
            self.read_counters()
        else:
            replaced = sorted(set(_REPLACED_CHAIN.findall(script)))
            if replaced:
                # Those chains' rules and counters are about to go: read them first.
                self.read_counters(replaced)
        try:
            if script:
                t0 = self._timer()
                self._apply(script)
                self.last_apply_seconds = self._timer() - t0
                self.applies[action] += 1
        except PolicyApplyError:
            self._applied = None          # replace the whole table next time
            log.error("policy_apply_failed", action=action)
            raise
        if full:
            self.deny.forget_rules()      # a new table: every rule counts from zero
        self._applied = self._in_kernel = plan
        self.rules, self.sets = ruleset_size(plan, self.prefix)
        self._dirty = False
        # A drifted kernel (a hand-flushed chain, a deleted table) may have admitted
        # flows our plan denies, even when the plan itself did not change: cut then too.
        if (self.cut_denied_flows and self._last_plan is not None
                and (plan != self._last_plan or drifted)):
            try:
                cut = self.conntrack.cut(plan)
                if cut:
                    log.info("policy_flows_cut", flows=cut)
            except OSError as exc:
                # The policy is in place; only old flows linger. Try again next change.
                log.warning("policy_conntrack_cut_failed", error=str(exc))
        self._last_plan = plan
        if counters_due and not full:       # a full apply's counters are all zero
            self.read_counters()
        if action == "full":
            self._next_resync = now + self.resync_interval
            self._next_drift_check = now + self.drift_check_interval
        self.last_action = action
        log.info("policy_applied", action=action, endpoints=len(plan.endpoints),
                 chains=len(plan.chains))
        return action

    def remove(self) -> None:
        """Delete our table (and only it); idempotent."""
        self.read_counters()              # what it dropped until now still counts
        self._apply(f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
        self.deny.forget_rules()
        self._applied = self._in_kernel = None
        self.rules = self.sets = 0
        self._dirty = True
