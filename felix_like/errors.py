"""The dataplane's one exception root.

Every error raised by ``felix_like`` derives from ``DataplaneError`` (and keeps its
builtin base, e.g. ``OSError`` for netlink errors, so callers that catch the builtin
still do). ``tunnels.errors.TunnelError`` is the tunnels package's own root: tunnels
sits below the dataplane and cannot import it.
"""

from __future__ import annotations


class DataplaneError(Exception):
    """Something in the dataplane failed; the message names the object and the fix."""
