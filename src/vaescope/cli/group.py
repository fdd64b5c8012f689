"""The ``vaescope`` command group: one ``Error: ...`` line for a bad option or a :class:`VaescopeError`,
and the library's progress messages on stderr."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from vaescope.core.errors import VaescopeError


class _TqdmHandler(logging.Handler):
    """Progress messages of the library (logger ``vaescope``) to stderr, above any progress bar;
    stdout keeps the results (tables, JSON)."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging() -> None:
    logger = logging.getLogger("vaescope")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        logger.addHandler(_TqdmHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _Group(click.Group):
    """Turns a :class:`VaescopeError`, and a bad option, into one ``Error: ...`` line and exit
    status 2 (click's own report of a bad option is three lines with the usage)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VaescopeError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(2)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as err:
            where = f"; see '{err.ctx.command_path} --help'" if err.ctx is not None else ""
            click.echo(f"Error: {err.format_message().rstrip('.')}{where}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaescope")
def main() -> None:
    """Train Variational Autoencoders and study their latent space."""
    _configure_logging()
