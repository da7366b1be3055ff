"""``python -m crmsync`` is the ``crmsync`` command."""

from .cli import main

main()
