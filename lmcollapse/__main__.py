"""``python -m lmcollapse``: the same verbs as the ``lmcollapse`` command."""

from lmcollapse.cli import main

raise SystemExit(main())
