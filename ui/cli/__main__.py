"""`python -m ui.cli ...`: the same entry point as the `imgsearch` script."""

import sys

from ui.cli import main

sys.exit(main())
