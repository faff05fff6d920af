"""Command line: `python -m tooncrafter_core VERB ...` (see `--help`); the verbs are in `commands/`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .commands import VERBS, common
from .errors import InputError
from .weights.catalog import DownloadError
from .weights.checkpoint import CheckpointError
from .weights.lora import LoraError

log = logging.getLogger("tooncrafter_core")


class DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.option_strings and action.default not in (None, False, "", [], argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    # `tooncrafter` when run as the installed console script.
    prog = "python -m tooncrafter_core" if sys.argv[0].endswith("__main__.py") else os.path.basename(sys.argv[0])
    parser = argparse.ArgumentParser(prog=prog, description="ToonCrafter keyframe interpolation")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb_parser = verb.add_parser(sub)
        verb_parser.formatter_class = DefaultsFormatter
        verb_parser.set_defaults(run=verb.run)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    common.resolve_models_dir(args)
    try:
        return args.run(args)
    except (InputError, CheckpointError, DownloadError, LoraError, ValueError) as e:
        log.error("error: %s", e)
        return 2
    except FloatingPointError as e:
        log.error("error: %s (--dtype bf16 or --dtype fp32 on this command line)", e)
        return 3
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C


if __name__ == "__main__":
    sys.exit(main())
