"""``python -m pyg_gatv2``: the ``pyg-gatv2`` command line."""
import sys

from pyg_gatv2.cli import main

sys.exit(main())
