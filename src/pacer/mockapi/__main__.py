"""``python -m pacer.mockapi [flags]``."""

from pacer.mockapi.cli import main

raise SystemExit(main())
