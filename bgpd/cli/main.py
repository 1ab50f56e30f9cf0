"""`noderouter`: the daemon and the operator CLI (one click group).

Exit codes: 0 ok, 1 failure, 2 usage error (click's default for bad usage).
"""

from __future__ import annotations

import os

import click

# gRPC's C core logs to stderr on its own (fork handlers, absl init): the CLI's
# stderr carries one clear line per error, and the daemon logs through structlog.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="noderouter")
def main() -> None:
    """noderouter: BGP-routed layer-3 networking for container clusters."""


def _register() -> None:
    # Each command family lives in its own module; registration is explicit so
    # a broken module fails loudly at start instead of silently vanishing.
    from bgpd.cli import config_commands as cli_config

    main.add_command(cli_config.check_config)
    main.add_command(cli_config.config_reference)
    from bgpd.cli import node_commands as cli_node

    for command in cli_node.commands:
        main.add_command(command)
    from bgpd.cli import ipam_commands as cli_ipam

    main.add_command(cli_ipam.ipam)
    main.add_command(cli_ipam.pool)
    from bgpd.cli import policy_commands as cli_policy

    for command in cli_policy.commands:
        main.add_command(command)
    from bgpd.cli import doctor_commands as cli_doctor

    main.add_command(cli_doctor.doctor)


_register()

if __name__ == "__main__":
    main()
