"""``python -m reverserd``: the same as the ``reverserd`` command."""

from reverserd.entry import command

command()
