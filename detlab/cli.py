"""What every command-line tool in ``tools/`` does with an error, in one place.

    @tool
    def main(argv=None) -> int: ...

    if __name__ == "__main__":
        sys.exit(main())

An expected error - a :class:`~detlab.errors.DetlabError` (a bad setting, data file or checkpoint, a run that had to
stop), or a file or folder an argument names that is missing (``FileNotFoundError``) or already there
(``FileExistsError``) - is one line ``error: <message>`` on stderr and exit code 2, as argparse's own errors are.
Any other exception is a bug: it keeps its traceback (exit code 1).
"""

import functools
import sys

from detlab.errors import DetlabError

#: The errors a tool reports as one line.
EXPECTED = (DetlabError, FileNotFoundError, FileExistsError)


def tool(main):
    """``main(argv=None) -> exit code`` that reports an expected error as one line on stderr and returns 2."""

    @functools.wraps(main)
    def run(argv=None) -> int:
        try:
            return main(argv)
        except EXPECTED as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    return run
