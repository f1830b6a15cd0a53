"""``discobox <verb> ...``: the parser of every verb and the one place that handles errors.

Each verb lives in its own module of this package (``register(subparsers)`` adds its parser,
``cmd_*`` calls one library function). A :class:`~discobox.errors.DiscoboxError` (a mistake the
user can fix: bad config key, missing file, unreadable image or checkpoint, bad argument
combination) is printed as one line, ``discobox VERB: error: MESSAGE``, with exit status 2; set
``DISCOBOX_DEBUG=1`` to see its traceback. Every other exception is a bug and propagates with
its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import DiscoboxError
from . import (
    convert,
    convert_voc,
    correspond,
    demo,
    eval_corr,
    export,
    export_onnx,
    json2mat,
    predict,
    pseudo_label,
    recipes,
    show,
    test,
    train,
    voc_exclude,
    zoo,
)

# In the order `discobox --help` lists them.
VERBS = (demo, train, test, predict, pseudo_label, correspond, eval_corr, voc_exclude, convert,
         convert_voc, json2mat, export, show, export_onnx, zoo, recipes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discobox",
        description="DiscoBox: instance segmentation and correspondence from bounding boxes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for verb in VERBS:
        verb.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting positional items (``KEY=VALUE`` overrides, ``predict``'s images) also
    follow options: argparse leaves those over, and they join the verb's ``items`` or
    ``overrides``; anything else left over is an error, as argparse would report it."""
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    if hasattr(args, "items"):
        dest, bad = "items", [e for e in extra if e.startswith("-")]
    else:
        dest, bad = "overrides", [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or not hasattr(args, dest):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    setattr(args, dest, [*(getattr(args, dest) or []), *extra])
    return args


def _one_line(exc: DiscoboxError) -> str:
    """The message of ``exc``; for one re-raised by a DataLoader worker (torch wraps it as
    "Caught X in DataLoader worker process N. Original Traceback ... X: message"), the original
    message only."""
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if f"{type(exc).__name__}: " in last else last


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    try:
        return int(args.func(args) or 0)
    except DiscoboxError as exc:
        if os.environ.get("DISCOBOX_DEBUG", "") not in ("", "0"):
            raise
        print(f"discobox {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"discobox {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `discobox zoo | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush stays quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
