"""A password in the node config is never echoed, even when it is refused.

The loader's error messages go to stderr and the journal. A password of the wrong type (an
unquoted numeric password is a YAML integer) or of the wrong form used to be quoted in the
message, or accepted and refused only when the speaker started. Real loader, real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.bgp.exabgp_config import SpeakerConfigError, check_password
from config import ConfigError, load_text

EXE = os.path.join(os.path.dirname(sys.executable), "noderouter")

BASE = """\
node: {name: n1, as_number: 64512}
underlay: {interface: eth0, address: 198.18.1.11, subnet: 198.18.1.0/24}
etcd: {endpoints: ["198.18.0.10:2379"]}
pools: [{cidr: 198.19.0.0/16}]
bgp:
  mesh_password: %s
  peers:
    - {address: 198.18.1.1, as_number: 64701, password: %s}
"""

BAD = {  # YAML value -> the secret text that must not appear
    "98127634": "98127634",                        # unquoted digits: an int
    "[Lst-S3cret]": "Lst-S3cret",                  # a list
    "{k: Map-S3cret}": "Map-S3cret",               # a mapping
    '"Sp ace-S3cret"': "Sp ace-S3cret",            # whitespace
    '"Q\\"uote-S3cret"': 'Q"uote-S3cret',          # a quote (would break ExaBGP's config)
    '"' + "L0ng-S3cret" * 8 + '"': "L0ng-S3cret" * 8,  # > 80 bytes (TCP MD5 key limit)
}


@pytest.mark.parametrize("yaml_value", list(BAD))
@pytest.mark.parametrize("where", ["mesh", "peer"])
def test_a_refused_password_is_not_echoed(yaml_value, where):
    secret = BAD[yaml_value]
    good = '"Good-pw1"'
    text = BASE % ((yaml_value, good) if where == "mesh" else (good, yaml_value))
    with pytest.raises(ConfigError) as exc:
        load_text(text, "node.yaml")
    msg = str(exc.value)
    key = "bgp.mesh_password" if where == "mesh" else "bgp.peers[0].password"
    assert key in msg
    assert secret not in msg and secret.split("-")[0] not in msg, msg


@pytest.mark.integration
def test_check_config_cli_does_not_echo_passwords(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(BASE % ("98127634", '"Sp ace-S3cret"'))
    for fmt in ([], ["-o", "json"]):
        res = subprocess.run([EXE, "check-config", *fmt, str(path)], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1
        out = res.stdout + res.stderr
        assert "mesh_password" in out and "peers[0].password" in out
        assert "98127634" not in out and "S3cret" not in out, out
    # The same through an environment override.
    path.write_text(BASE % ('"Good-pw1"', '"Good-pw2"'))
    res = subprocess.run([EXE, "check-config", str(path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "NODEROUTER_BGP_MESH_PASSWORD": "E v-S3cret"})
    assert res.returncode == 1 and "S3cret" not in res.stdout + res.stderr


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=86).filter(lambda s: "\\" not in s and '"' not in s
                                   and "\n" not in s and "\r" not in s))
def test_loader_and_speaker_agree_on_passwords_and_never_echo_them(suffix):
    pw = "Zq9-" + suffix  # the marker never occurs in a message template
    text = BASE % ('"Good-pw1"', '"' + pw + '"')
    try:
        cfg = load_text(text, "node.yaml")
    except ConfigError as exc:
        msg = str(exc)
        assert pw not in msg and "Zq9-" not in msg, msg
        for line in msg.splitlines():
            if "bgp.peers[0].password" in line:  # the whole line is a fixed template
                assert line.startswith("node.yaml:8: bgp.peers[0].password: '***' is wrong; "
                                       "expected 1-80 printable"), line
        with pytest.raises(SpeakerConfigError):
            check_password(pw)
        return
    assert check_password(cfg.bgp.peers[0].password) == pw
