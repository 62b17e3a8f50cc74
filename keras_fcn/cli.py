"""The `keras-fcn` command line: each verb parses its flags, calls the library and reports.

Verbs import TensorFlow lazily so that `keras-fcn --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys


class CommandError(Exception):
    """An error the user can fix; printed as one line and exit code 2, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-fcn", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add_verb in _VERBS:
        add_verb(verbs)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        print(f"keras-fcn {args.verb}: error: {error}", file=sys.stderr)
        return 2


# Each verb is one `_add_<verb>(verbs)` function that registers its parser and sets `run`.
_VERBS: list = []


if __name__ == "__main__":
    sys.exit(main())
