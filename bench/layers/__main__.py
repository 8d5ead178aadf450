"""``python -m bench.layers``: the benchmark's parent process, or (with ``--worker``,
``--memory-child`` or ``--profile-child``) one of the processes it starts."""

import sys

from bench.layers.cli import main

if __name__ == "__main__":
    sys.exit(main())
