"""Command-line helpers: user mistakes end with a one-line message, not a traceback."""
import sys
from typing import Callable


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main``; a ``ValueError`` (bad input, named by mmens) exits with status 2."""
    try:
        main()
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
