"""What ``pacer run`` leaves out of its start-up.

structlog imports rich, when it is installed (pacer needs it for ``pacer status``),
to draw tracebacks on a console: 50 ms of CPU at every start, a sixth of the
daemon's imports, for JSON logs that never use it. :func:`import_structlog_lean`
imports structlog with rich hidden; :func:`pacer.logs.configure_logging` loads
structlog's console part again, with rich, if the console format is asked for.
"""

from __future__ import annotations

import sys


def import_structlog_lean() -> None:
    """Import structlog without rich (a no-op once structlog is imported)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]
