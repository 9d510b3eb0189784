"""A worker that replays a trace through expiry's real client: ``python -m bench.replay FILE START``.

FILE holds JSON ``[[scope, seconds or null, requested], ...]`` in real seconds (already scaled).
For each block from START on, it prints ``INDEX MONOTONIC`` (CLOCK_MONOTONIC just before the
acquire) and runs the block: ``with expires(after=requested, scope=scope): sleep(seconds)``; a
null is the hang. The harness learns from the last line printed which block a kill ended.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from expiry import expires


def main() -> None:
    path, start = sys.argv[1], int(sys.argv[2])
    with open(path) as file:
        blocks = json.load(file)
    for index in range(start, len(blocks)):
        scope, seconds, requested = blocks[index]
        print(index, time.monotonic(), flush=True)
        with expires(after=requested, scope=scope):
            if seconds is None:
                threading.Event().wait()
            time.sleep(seconds)


if __name__ == "__main__":
    main()
