"""`python -m streams` is `cxmon`."""

import sys

from streams.commands.cli import main

sys.exit(main())
