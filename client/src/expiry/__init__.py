"""expiry: kill a training worker whose block outlives its deadline.

>>> from expiry import expires
>>> with expires(after=60):
...     loss = step(batch)

A drop-in for ``torch.distributed.elastic.timer``'s ``expires``/``configure``/``FileTimerClient``
(same wire format, so torch's server and expiry's sidecar serve either client), with no dependencies.
"""

from expiry.api import TimerClient, configure, expires
from expiry.pipe import ServerUnavailable
from expiry.timer_client import FileTimerClient

__all__ = ["FileTimerClient", "ServerUnavailable", "TimerClient", "configure", "expires"]
__version__ = "0.2.0.dev0"
