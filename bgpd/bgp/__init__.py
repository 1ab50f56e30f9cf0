"""The BGP speaker: ExaBGP as the protocol engine, everything else ours.

Modules (the path of a learned route, in order)
- ``exabgp_relay``: the API process ExaBGP spawns; copies its pipes to our unix socket
  (stdlib only, runnable as a plain script).
- ``events``: the event vocabulary (values only; imports no decoder).
- ``exabgp_lines``: ExaBGP's API lines (state, acks, answers, JSON) -> events.
- ``wire``: BGP message bodies (``receive { packets; }``) decoded into those events.
- ``import_policy``: default-deny import checks, one reason per rejection.
- ``rib``: accepted routes, best path per prefix, ECMP across peers.
- ``core``: ``SpeakerCore``, the pure state machine: events in, RIB changes and
  ExaBGP commands out (time is a parameter).
- ``speaker``: ``Speaker``, the shell: supervises ExaBGP, the only place that touches
  its pipe.
- ``exabgp_config`` / ``exabgp_commands``: ExaBGP's configuration and API command lines,
  generated from typed values, every spliced string validated.
- ``peers``: peer status as the CLI shows it, per-peer monotonic counters.
- ``errors``: ``BgpError``, the room's one exception root.

Review notes (invariants)
- Imports nothing of ``bgpd.node``, ``bgpd.cni`` or ``bgpd.cli`` (import-linter).
- ExaBGP never touches the FIB; the RIB's changes leave this room as values.
- Every command line written to ExaBGP is acknowledged and read (exabgp #1168).
- After ExaBGP (re)starts or a peer comes up, the whole desired set is re-announced;
  End-of-RIB follows only once the node marked its announcements complete (issue 18).
- Graceful restart holds a peer's routes only when its session was lost (TCP, hold timer,
  ExaBGP restart), never after a NOTIFICATION ended it (issue 18).
- A session we end on purpose ends with a Cease (RFC 4486) or, where ExaBGP would close
  silently (our graceful restart), after our routes to that peer were withdrawn.
"""
