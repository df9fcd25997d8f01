"""``python -m seg.bench``: see :mod:`seg.bench`."""

from seg.bench.cli import main

main()
