"""``discobox recipes``: list the built-in recipes, or print one resolved."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import ConfigError, available_recipes, load_config


def cmd_recipes(args: argparse.Namespace) -> int:
    names = available_recipes()
    if args.show is None:
        print("\n".join(names))
    elif args.show in names:
        print(load_config(args.show).to_yaml())
    else:
        raise ConfigError(f"no recipe {args.show!r}; built-in: {', '.join(names)}")
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``discobox recipes [--show NAME]``."""
    p = subparsers.add_parser("recipes", help="list the built-in recipes")
    p.add_argument("--show", default=None, help="print one recipe's resolved config")
    p.set_defaults(func=cmd_recipes)
    return p
