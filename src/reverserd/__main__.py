"""``python -m reverserd``: the same as the ``reverserd`` command."""

from reverserd.cli import command

command()
