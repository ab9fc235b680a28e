"""``python -m pyg_gatv2`` and the ``pyg-gatv2`` command: the command line
of :mod:`pyg_gatv2.experiments`, which says which extra to install when
its packages are missing."""
import sys
from collections.abc import Sequence
from typing import Optional

from pyg_gatv2.extras import MissingExtraError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the ``pyg-gatv2`` command line; returns its exit code."""
    try:
        from pyg_gatv2.experiments.cli import main as cli_main
    except MissingExtraError as error:
        print(f'pyg-gatv2: error: {error}', file=sys.stderr)
        return 2
    return cli_main(argv)


if __name__ == '__main__':
    sys.exit(main())
