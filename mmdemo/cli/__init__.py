"""The command line, `python -m mmdemo COMMAND`."""

from .main import main

__all__ = ["main"]
