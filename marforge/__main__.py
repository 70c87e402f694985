"""`python -m marforge ...`: see marforge/cli.py."""

import sys

from marforge.cli import main

sys.exit(main())
