"""``python -m mmdemo``: see mmdemo/cli/main.py."""

import sys

from .cli.main import main

sys.exit(main())
