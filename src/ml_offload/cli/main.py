"""`mlo`'s entry point: `mlo serve` imports only what serving needs.

The whole command tree (cli/commands.py) brings Rich tables, httpx, the analyzer and every
command's module; a gateway process needs none of them (issue 20: memory and start-up time).
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        from ml_offload.cli.serve import serve_main

        serve_main()
        return
    from ml_offload.cli.commands import main as run_command

    run_command()


def alias_main() -> None:
    """Entry point of the original stack's command names (`ml-ls` runs `mlo ls`)."""
    from ml_offload.cli.commands import alias_main as run_alias

    run_alias()


if __name__ == "__main__":
    main()
