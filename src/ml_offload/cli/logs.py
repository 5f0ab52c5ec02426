"""`mlo logs [-f] [-n N] [--model M]`: the daemon's log (one access line per request among the
gateway's own), or model M's engine log."""

from __future__ import annotations

import time
from typing import Annotated, BinaryIO

import typer

from ml_offload.backends.child import engine_log
from ml_offload.cli.client import CliError
from ml_offload.cli.common import ConfigOpt, out, settings_for, state_dir
from ml_offload.daemon import Daemon

_POLL_S = 0.25


def logs(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="This model's engine log instead.")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Print new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=0, help="Lines to show.")] = 50,
    config: ConfigOpt = None,
) -> None:
    """Show the gateway daemon's log (or a model's engine log with --model); -f follows it."""
    if model is None:
        path = Daemon(state_dir()).log_path
        hint = "the daemon writes it (mlo server start); mlo serve logs to its terminal"
    else:
        path = engine_log(settings_for(config).storage.logs_path, model)
        hint = f"model {model!r} has not been started here (or the name is not the model's)"
    if not path.is_file():
        raise CliError(f"no log at {path}: {hint}")
    with path.open("rb") as fh:
        tail = fh.read().decode(errors="replace").splitlines()[-lines:] if lines else []
        for line in tail:
            _print(line)
        if follow:
            _follow(fh)


def _follow(fh: BinaryIO) -> None:
    """New lines as they are written, until Ctrl-C."""
    try:
        while True:
            chunk = fh.readline()
            if chunk:
                _print(chunk.decode(errors="replace").rstrip("\n"))
            else:
                time.sleep(_POLL_S)
    except KeyboardInterrupt:
        return


def _print(line: str) -> None:
    out.print(line, markup=False, highlight=False, soft_wrap=True)
