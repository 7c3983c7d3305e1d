"""``python -m seqcast``: the same command line as the ``seqcast`` script."""

import sys

from seqcast.cli import main

if __name__ == "__main__":
    sys.exit(main())
