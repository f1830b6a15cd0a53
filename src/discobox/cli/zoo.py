"""``discobox zoo``: the built-in recipes with their official weights and reported AP
(:func:`discobox.checkpoint.zoo.format_table`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..checkpoint.zoo import format_table


def cmd_zoo(args: argparse.Namespace) -> int:
    print(format_table())
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox zoo``."""
    p = subparsers.add_parser("zoo", help="recipes with their official weights and reported AP")
    p.set_defaults(func=cmd_zoo)
    return p
