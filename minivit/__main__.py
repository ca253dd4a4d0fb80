"""``python -m minivit ...`` is the ``minivit`` command."""
import sys

from .cli import main

sys.exit(main())
