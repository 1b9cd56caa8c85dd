"""``python -m jacfree`` (and ``torchrun -m jacfree``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
