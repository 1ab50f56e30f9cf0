"""The tunnels package's exception family."""

from __future__ import annotations


class TunnelError(RuntimeError):
    """A tunnel device or encapsulation decision that cannot be made as asked."""


class TunnelUnsupported(TunnelError):
    """The kernel cannot create the link kind a mode needs (missing module)."""
