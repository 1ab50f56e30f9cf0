"""One lab per peering design, shared by the e2e tests of a module (it takes ~20 s to build)."""

import pytest

from lab.topology import Lab


def build_lab(design: str, nodes_per_rack: int = 2, pods_per_node: int = 2, **kw) -> Lab:
    lab = Lab(design=design, nodes_per_rack=nodes_per_rack, **kw)
    try:
        lab.up()
        lab.start_all(wait=True)
        for n in lab.nodes:
            for i in range(1, pods_per_node + 1):
                lab.add_pod(n.name, f"p{i}")
    except BaseException:
        lab.down()
        raise
    return lab


@pytest.fixture(scope="module", params=["tor", "mesh"])
def lab(request):
    the_lab = build_lab(request.param)
    try:
        yield the_lab
    finally:
        errors = the_lab.down()
        assert not errors, errors
