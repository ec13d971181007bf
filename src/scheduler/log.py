"""structlog setup: JSON when stderr is not a terminal (or when asked), readable console otherwise.

Bound context variables (the request id, the environment) are merged into every line.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Literal

# structlog imports rich, when it is installed, for a console traceback formatter that this
# configuration never uses (format_exc_info renders tracebacks before the renderer sees them):
# hidden during that import, rich costs neither its 60 modules nor ~5 MB of the daemon's memory.
_hide_rich = "rich" not in sys.modules
if _hide_rich:
    sys.modules["rich"] = None  # type: ignore[assignment]
try:
    import structlog
finally:
    if _hide_rich:
        del sys.modules["rich"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
"""The id of the RPC being served, put on every line written while serving it.

One variable set per call: structlog's ``bind_contextvars`` costs several times as much, on
every call, for a line that is rarely written.
"""


def _add_request_id(logger: object, method: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    request_id = REQUEST_ID.get()
    if request_id:
        event.setdefault("request_id", request_id)
    return event


_threshold = logging.DEBUG
"""The lowest level written (everything until :func:`configure` says otherwise)."""


def enabled(level: int) -> bool:
    """Whether lines at ``level`` (a ``logging`` constant) are written: check before a frequent line."""
    return level >= _threshold


def configure(
    format: Literal["auto", "json", "console"] = "auto",
    level: Literal["debug", "info", "warning", "error"] = "info",
) -> None:
    """Configure structlog (and route stdlib logging through the same level)."""
    use_json = format == "json" or (format == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    global _threshold
    numeric = getattr(logging, level.upper())
    _threshold = numeric
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    logging.getLogger().setLevel(numeric)  # basicConfig does nothing the second time (a reload)
    # grpc's own debug lines (one per loop lookup) drown everything else.
    logging.getLogger("grpc").setLevel(max(numeric, logging.INFO))
    logging.getLogger("grpc._cython.cygrpc").setLevel(max(numeric, logging.INFO))
    # "Using selector: EpollSelector" and the like say nothing about the scheduler.
    logging.getLogger("asyncio").setLevel(max(numeric, logging.INFO))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    """Return a logger that names its component."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(component=name)
    return logger
