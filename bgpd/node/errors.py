"""The node daemon's one exception root: ``NodeError``."""

from __future__ import annotations


class NodeError(Exception):
    """The node daemon cannot start or continue; the message says what and how to fix it."""
