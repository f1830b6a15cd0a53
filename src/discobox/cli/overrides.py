"""``KEY=VALUE`` config overrides on the command line, shared by the verbs that take a config."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """Positional ``KEY=VALUE`` items (they may also follow options; ``main`` collects those)."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides with dotted keys, e.g. solver.lr=0.02 "
                             "data.batch_size=4")


def is_override(item: str) -> bool:
    """An argument containing ``=`` that is not an existing file is a ``KEY=VALUE`` override."""
    return "=" in item and not item.startswith("-") and not os.path.exists(item)


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``items`` -> ``(paths, overrides)``, each in the order given (rule: :func:`is_override`)."""
    paths = [i for i in items if not is_override(i)]
    overrides = [i for i in items if is_override(i)]
    return paths, overrides
