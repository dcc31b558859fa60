"""``python -m mmdemo``: see mmdemo/cli/__init__.py."""

import sys

from .cli import main

sys.exit(main())
