"""The command line's verbs, one module each: its argparse sub-parser (`add_parser`) beside its
`run(args) -> exit status`. `__main__` builds the parser from `VERBS` and dispatches."""

from . import animate, batch, colorize, convert, distill, evaluate, interpolate, replay, train_lora

VERBS = (interpolate, animate, colorize, convert, evaluate, batch, replay, train_lora, distill)
