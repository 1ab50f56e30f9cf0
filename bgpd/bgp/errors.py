"""The BGP speaker's one exception root: ``BgpError``.

Each error keeps its builtin base too (``ValueError`` for a bad value, ``RuntimeError``
for ExaBGP trouble), so callers that catch those still do.
"""

from __future__ import annotations


class BgpError(Exception):
    """Something in the BGP speaker failed; the message names the peer or value."""
