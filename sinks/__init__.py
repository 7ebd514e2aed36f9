"""Sinks: where alerts go (see ``sinks.base`` for the protocol).

Importing this package registers every built-in sink in ``SINKS``. The SQL
store (``sinks.store``) is not a sink: it is the record of truth that the
outbox (``sinks.outbox``) delivers from.
"""

from sinks.base import SINKS, SinkError  # noqa: F401
from sinks import kafka, slack  # noqa: F401, E402 - registration

__all__ = ["SINKS", "SinkError"]
