"""Command line: `python -m tooncrafter_core VERB ...` (see `--help`); the verbs are in `commands/`."""

from __future__ import annotations

import argparse
import logging
import sys

from .commands import VERBS
from .errors import InputError
from .weights.catalog import DownloadError
from .weights.checkpoint import CheckpointError
from .weights.lora import LoraError

log = logging.getLogger("tooncrafter_core")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tooncrafter_core", description="ToonCrafter keyframe interpolation")
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS:
        verb.add_parser(sub).set_defaults(run=verb.run)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
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
