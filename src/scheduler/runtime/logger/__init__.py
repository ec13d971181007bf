"""Container logs: the program the shim starts for a task's stdio, its shared writer, and the record format.

Standard library only (the program is installed as a zip of this package and runs with
``python -I -S``); see :mod:`.host` for how the writing is shared and :mod:`.records` for the format.
"""

from .host import DRAIN_SECONDS, HANDOVER, PROGRAM, is_shared_writer, launcher, main, parse_args, run, serve
from .records import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    MAX_RECORD,
    STREAMS,
    Clock,
    StreamWriter,
    parse_record,
    rotated_name,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "DRAIN_SECONDS",
    "HANDOVER",
    "MAX_RECORD",
    "PROGRAM",
    "STREAMS",
    "Clock",
    "StreamWriter",
    "is_shared_writer",
    "launcher",
    "main",
    "parse_args",
    "parse_record",
    "rotated_name",
    "run",
    "serve",
]
