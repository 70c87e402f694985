"""`python -m marforge ...`: see marforge/cli/__init__.py."""

import sys

from marforge.cli import main

sys.exit(main())
