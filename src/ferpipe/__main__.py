"""`python -m ferpipe ...` runs the console script `ferpipe ...`."""
import sys

from ferpipe.cli import main

sys.exit(main())
