"""The etcd connection options every datastore command shares (endpoints, TLS, timeout).

Each command family adds its own key-prefix option: IPAM's ``--etcd-prefix`` (the IPAM
prefix) and policy's ``--etcd-root`` (the whole noderouter prefix) mean different keys.
"""

from __future__ import annotations

import click

_FILE = click.Path(exists=True, dir_okay=False)


def etcd_connection_options(f):
    """Adds ``etcd_endpoints``, ``etcd_ca``, ``etcd_cert``, ``etcd_key``, ``etcd_timeout``."""
    for option in reversed((
        click.option("--etcd-endpoints", envvar="NODEROUTER_ETCD_ENDPOINTS",
                     default="127.0.0.1:2379", show_default=True,
                     help="etcd endpoints, host:port[,host:port...] "
                          "(env NODEROUTER_ETCD_ENDPOINTS)."),
        click.option("--etcd-ca", envvar="NODEROUTER_ETCD_CA", type=_FILE,
                     help="CA bundle for etcd TLS (env NODEROUTER_ETCD_CA)."),
        click.option("--etcd-cert", envvar="NODEROUTER_ETCD_CERT", type=_FILE,
                     help="Client certificate for etcd TLS (env NODEROUTER_ETCD_CERT)."),
        click.option("--etcd-key", envvar="NODEROUTER_ETCD_KEY", type=_FILE,
                     help="Client key for etcd TLS (env NODEROUTER_ETCD_KEY)."),
        click.option("--etcd-timeout", type=float, default=5.0, show_default=True,
                     help="Seconds before an etcd call gives up."),
    )):
        f = option(f)
    return f
