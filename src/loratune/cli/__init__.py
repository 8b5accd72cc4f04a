"""Command line: `loratune train | validate | evaluate | predict | compare | check-data | export | serve |
report`. Each subcommand (`cli.commands`) is a few lines that call the library; user mistakes print one line and
exit with status 2 (`--debug` shows the traceback)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from loratune.cli.parser import build_parser, unknown_options
from loratune.cli.ranks import failure_line, is_first_rank, rank
from loratune.cli.signals import exit_status, sigterm_as_interrupt, what_stopped
from loratune.errors import ConfigError, LoratuneError
from loratune.quiet import quiet_command_line, quiet_libraries
from loratune.runs.storage import disk_full_message, is_out_of_space

EXIT_USAGE = 2
EXIT_FAILED = 1  # one of several processes failed (a bug or a lost peer): not the user's mistake


# Commands that load datasets or models, whose progress bars and warnings are hidden while they run.
_LOADS_LIBRARIES = ("evaluate", "predict", "export", "check-data", "serve")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `loratune` command; returns the exit status."""
    quiet_command_line()
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            raise ConfigError(unknown_options(extras, parser.commands[args.command]))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(levelname)s %(message)s")
    with sigterm_as_interrupt():
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """The command, its mistakes as one line and exit 2, an interrupt or SIGTERM as one line and 130 or 143."""
    try:
        if args.command in _LOADS_LIBRARIES:  # train's run() quiets them itself
            with quiet_libraries():
                return args.func(args)
        return args.func(args)
    except LoratuneError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # a full disk is no bug: one line, as for a user mistake
        if not args.debug and is_out_of_space(error):
            print(f"error: {disk_full_message(Path('.'), error)}, then run the command again.", file=sys.stderr)
            return EXIT_USAGE
        if args.debug or rank() is None:
            raise
        print(failure_line(error, rank()), file=sys.stderr)  # one of several processes: one line, not a traceback
        return EXIT_FAILED
    except KeyboardInterrupt as interrupt:
        if is_first_rank():  # the launcher stops every rank: the first one says so
            print(what_stopped(interrupt), file=sys.stderr)
        return exit_status(interrupt)


if __name__ == "__main__":
    sys.exit(main())
