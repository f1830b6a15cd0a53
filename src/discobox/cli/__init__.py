"""The ``discobox`` command line: one argparse module per verb."""

from .main import main

__all__ = ["main"]
