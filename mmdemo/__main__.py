"""``python -m mmdemo``: see mmdemo/cli.py."""

import sys

from .cli import main

sys.exit(main())
