"""``python -m relprop_bench localisation ...``: the same as ``relprop-bench``."""

from relprop_bench.cli import main

raise SystemExit(main())
