"""``python -m flows.cli ...``: the same as ``mlcore ...``."""

from flows.cli import main

main()
