"""Command-line helpers: user mistakes end with a one-line message, not a traceback."""
import sys
from typing import Callable


def run_cli(main: Callable[[], None]) -> None:
    """Run ``main``; a ``ValueError`` or ``TypeError`` (bad input, named by mmens) exits
    with status 2 and one line on stderr."""
    try:
        main()
    except (ValueError, TypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
