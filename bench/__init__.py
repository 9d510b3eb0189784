"""expiry's benchmark suite: every figure for expiry and for torch's FileTimerServer, side by side.

Run ``bench/run`` (or ``.venv/bin/python -m bench [--quick]``); see docs/performance.md.
"""
