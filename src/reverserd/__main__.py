"""``python -m reverserd``: the same as the ``reverserd`` command."""

import sys

from reverserd.cli import main

sys.exit(main())
