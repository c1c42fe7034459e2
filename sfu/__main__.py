"""``python -m sfu``: same as the ``sfu`` console script."""

from sfu.cli import main

raise SystemExit(main())
