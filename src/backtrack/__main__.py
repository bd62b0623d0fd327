"""``python -m backtrack``: the ``backtrack`` command."""

from backtrack.cli import main

main()
