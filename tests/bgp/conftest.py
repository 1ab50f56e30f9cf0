"""Fixtures for the BGP integration tests: one L2 segment (a bridge in its own namespace)
with our speaker's namespace, a BIRD namespace and an FRR namespace on 198.18.251.0/24."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from lab.netns import run_prefix, sh, veth_pair

SPEAKER, BIRD, FRR = "198.18.251.10", "198.18.251.1", "198.18.251.2"
LOCAL_AS, BIRD_AS, FRR_AS = 64512, 65001, 65002
POOLS = ("198.19.0.0/17",)
OWN_BLOCK = "198.19.1.0/26"


@dataclass
class Fabric:
    prefix: str
    speaker_ns: str
    bird_ns: str
    frr_ns: str
    workdir: str


@pytest.fixture
def fabric(netns_set, tmp_path) -> Fabric:
    p = run_prefix("nrb")
    sw = netns_set.add(f"{p}-sw")
    names = {"e": netns_set.add(f"{p}-ex"), "b": netns_set.add(f"{p}-bird"),
             "f": netns_set.add(f"{p}-frr")}
    sh(["ip", "link", "add", "br0", "type", "bridge"], netns=sw)
    sh(["ip", "link", "set", "br0", "up"], netns=sw)
    for tag, addr in (("e", SPEAKER), ("b", BIRD), ("f", FRR)):
        veth_pair(f"{p}{tag}", names[tag], f"s{tag}", sw)
        sh(["ip", "link", "set", f"s{tag}", "master", "br0"], netns=sw)
        sh(["ip", "addr", "add", f"{addr}/24", "dev", f"{p}{tag}"], netns=names[tag])
    wd = str(tmp_path)
    os.chmod(wd, 0o755)
    return Fabric(p, names["e"], names["b"], names["f"], wd)
