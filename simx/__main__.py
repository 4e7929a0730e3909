"""``python -m simx``: the same as the ``simx`` console script."""
import sys

from .cli import main

sys.exit(main())
