"""The command line's verbs, one module each: its argparse sub-parser (`add_parser`) beside its
`run(args) -> exit status`. `__main__` builds the parser from `VERBS` and dispatches."""

from . import batch, convert, evaluate, interpolate, replay

VERBS = (interpolate, convert, evaluate, batch, replay)
