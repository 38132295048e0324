"""``python -m search`` is the ``trimtab`` command."""

from search.cli import main

main(prog_name="trimtab")
