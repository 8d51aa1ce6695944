"""``python -m relprop ...`` and ``torchrun -m relprop explain ...``: the command line."""

from .cli import main

raise SystemExit(main())
