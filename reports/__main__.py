"""`python -m reports ...`: the same as `megapod report ...`."""

import sys

from reports.cli import main

sys.exit(main(sys.argv[1:]))
