"""``python -m seg.compare``."""

from seg.compare.cli import main

main()
