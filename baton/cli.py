"""The ``baton`` command: run the parts of the system and the tools around them."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from baton import edge_commands, health_commands, provision_commands, run_commands

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baton",
        description="Work over RabbitMQ that always knows who it acts for.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _REGISTRARS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return run(args)


Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]
_REGISTRARS: list[Registrar] = [
    provision_commands.register,
    run_commands.register,
    edge_commands.register,
    health_commands.register,
]
