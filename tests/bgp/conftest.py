"""Fixtures for the BGP integration tests: one L2 segment (a bridge in its own namespace)
with our speaker's namespace, a BIRD namespace and an FRR namespace on 198.18.251.0/24."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from lab.netns import run_prefix, switch_with_hosts

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
    names = switch_with_hosts(netns_set, p, {"e": ("ex", SPEAKER), "b": ("bird", BIRD),
                                             "f": ("frr", FRR)})
    wd = str(tmp_path)
    os.chmod(wd, 0o755)
    return Fabric(p, names["e"], names["b"], names["f"], wd)
