"""JSON for the plugin's fast path without the ``json`` package (issue 17).

``import json`` costs a plugin process ~5-10 ms of CPU: ``json.decoder`` and
``json.encoder`` import ``re`` (and ``enum``) and compile their patterns, on every
pod ADD, DEL and VERSION. The parsing itself is C code in ``_json``, which needs
none of that: ``make_scanner`` is the same C scanner ``json.loads`` uses, and
``encode_basestring_ascii`` the same string encoder ``json.dumps`` uses. This module
wraps the two for what the fast path reads and writes (the network configuration,
the daemon's one-line reply, the request and the VERSION answer). Only ``_json``.

``loads`` accepts exactly what ``json.loads`` accepts for a ``str`` (JSON whitespace
around one value); ``dumps`` writes what ``json.dumps`` writes for dicts, lists,
strings, ints, booleans and None with the given separators (a unit test compares
both against ``json``).
"""

from __future__ import annotations

import _json

_WHITESPACE = " \t\n\r"                  # JSON's (RFC 8259 section 2), as json.loads


class _Context:
    """What ``_json.make_scanner`` reads from a ``json.JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


_scan = _json.make_scanner(_Context())
_quote = _json.encode_basestring_ascii


def loads(text: str):
    """One JSON value from ``text``; ValueError if it is not exactly one."""
    s = text.strip(_WHITESPACE)
    try:
        value, end = _scan(s, 0)
    except (StopIteration, SystemError):
        # Bad input. The C scanner reports errors inside a value with
        # json.decoder.JSONDecodeError, looked up in sys.modules only: without the json
        # package loaded it fails with SystemError ("returned NULL without setting an
        # exception"). Only bad input gets here: let json say exactly what is wrong.
        return _json_loads(text)
    if end != len(s):
        return _json_loads(text)
    return value


def _json_loads(text: str):
    import json

    return json.loads(text)


def dumps(obj, item_sep: str = ", ", key_sep: str = ": ") -> str:
    """``json.dumps(obj, separators=(item_sep, key_sep))`` for dict (str keys), list,
    tuple, str, int, bool and None; TypeError for anything else."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, str):
        return _quote(obj)
    if isinstance(obj, int):
        return int.__repr__(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + item_sep.join(dumps(v, item_sep, key_sep) for v in obj) + "]"
    if isinstance(obj, dict):
        parts = []
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"keys must be str, not {type(k).__name__}")
            parts.append(_quote(k) + key_sep + dumps(v, item_sep, key_sep))
        return "{" + item_sep.join(parts) + "}"
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable here")
