"""``python -m backtrack.cli``: the ``backtrack`` command."""

from backtrack.cli import main

main()
