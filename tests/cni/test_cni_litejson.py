"""``bgpd.cni.litejson`` (issue 17): the fast path's JSON without the ``json`` package
must read and write exactly what ``json`` does for the values it handles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bgpd.cni import litejson

from .conftest import REPO

DOCS = ['{"cniVersion": "1.0.0", "name": "n", "daemon_socket": null}',
        '  \n{"a": [1, -2, 3.5, 1e3, true, false, null, {"b": {}}], "c": "\\u00e9\\n"}\t',
        '"just a string"', "42", "[]", '{"x": NaN, "y": -Infinity}',
        '{"dup": 1, "dup": 2}', '"\\ud800 lone surrogate"']
BAD = ["", "   ", "{", '{"a": 1} x', "[1,]", "{'a': 1}", "nul", '{"a": 1}{"b": 2}',
       '"tab\tinside"']


@pytest.mark.parametrize("text", DOCS)
def test_loads_reads_what_json_reads(text: str):
    got, want = litejson.loads(text), json.loads(text)
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


@pytest.mark.parametrize("text", BAD)
def test_loads_refuses_what_json_refuses(text: str):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        litejson.loads(text)


VALUES = [{"env": {"CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/é"}, "stdin": "{\"a\": 1}\n",
           "hostname": "h", "netns_fd": True, "netns_errno": 2},
          {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "1.1.0"]},
          ["\udcff surrogate-escaped byte", None, False, 0, -7, 2 ** 70], {}, [], ""]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("seps", [(", ", ": "), (",", ": ")])
def test_dumps_writes_what_json_writes(value, seps):
    assert litejson.dumps(value, *seps) == json.dumps(value, separators=seps)


@pytest.mark.parametrize("value", [1.5, {1: "int key"}, object(), {"a": {1, 2}}])
def test_dumps_refuses_what_it_does_not_handle(value):
    with pytest.raises(TypeError):
        litejson.dumps(value)


def test_bad_json_is_a_value_error_without_the_json_package_loaded():
    """The C scanner raises its errors through json.decoder, which it only looks up:
    in a plugin process (no json imported) a truncated document used to surface as
    SystemError, and the plugin died with a traceback instead of error code 6."""
    code = ("import sys\n"
            "from bgpd.cni import litejson\n"
            "assert 'json' not in sys.modules and 'json.decoder' not in sys.modules\n"
            "out = []\n"
            f"for text in {BAD!r}:\n"
            "    try:\n"
            "        litejson.loads(text)\n"
            "        out.append('parsed')\n"
            "    except ValueError:\n"
            "        out.append('ValueError')\n"
            "print(out)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == repr(["ValueError"] * len(BAD))
