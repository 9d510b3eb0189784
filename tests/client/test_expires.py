"""``expires``: scopes, nesting, recursion, threads and exceptions, seen by a recording client."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

import expiry
from expiry import api, expires


class Recorder:
    """A TimerClient that writes down what it is asked (what a server would receive)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float | None]] = []
        self.lock = threading.Lock()

    def acquire(self, scope_id: str, expiration_time: float) -> None:
        with self.lock:
            self.calls.append(("acquire", scope_id, expiration_time))

    def release(self, scope_id: str) -> None:
        with self.lock:
            self.calls.append(("release", scope_id, None))

    def armed(self) -> set[str]:
        armed: set[str] = set()
        for kind, scope, _ in self.calls:
            (armed.add if kind == "acquire" else armed.discard)(scope)
        return armed


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    previous = api._configured
    made = Recorder()
    expiry.configure(made)
    yield made
    api._configured = previous


def test_the_default_scope_is_the_line_that_wrote_expires(recorder: Recorder) -> None:
    before = time.time()
    line = sys._getframe().f_lineno + 1
    with expires(after=30):
        pass
    kind, scope, expiration = recorder.calls[0]
    assert (kind, scope) == ("acquire", f"{__file__}#{line}")
    assert expiration is not None and before + 30 <= expiration <= time.time() + 30
    assert recorder.calls[1] == ("release", scope, None)


def test_nested_blocks_are_distinct_timers(recorder: Recorder) -> None:
    with expires(after=60):
        with expires(after=5):
            pass
        assert len(recorder.armed()) == 1, "the inner release disarmed the outer block"
    outer, inner = recorder.calls[0][1], recorder.calls[1][1]
    assert outer != inner
    assert recorder.armed() == set()


def test_each_recursion_level_gets_its_own_scope(recorder: Recorder) -> None:
    @expires(after=60)
    def descend(depth: int) -> None:
        if depth:
            descend(depth - 1)
        else:
            assert len(recorder.armed()) == 4

    descend(3)
    scopes = [scope for kind, scope, _ in recorder.calls if kind == "acquire"]
    assert len(set(scopes)) == 4
    assert scopes[1] == scopes[0] + "@2"
    assert recorder.armed() == set()


def test_threads_running_the_same_line_do_not_share_a_timer(recorder: Recorder) -> None:
    inside = threading.Barrier(4)

    def work() -> None:
        with expires(after=60):
            inside.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({scope for kind, scope, _ in recorder.calls if kind == "acquire"}) == 4
    assert recorder.armed() == set()


def test_a_block_that_raises_is_released_and_the_error_propagates(recorder: Recorder) -> None:
    with pytest.raises(KeyError), expires(after=10, scope="step"):
        raise KeyError("boom")
    assert recorder.calls == [("acquire", "step", recorder.calls[0][2]), ("release", "step", None)]


def test_an_explicit_scope_is_used_as_given(recorder: Recorder) -> None:
    with expires(after=1, scope="allreduce"):
        pass
    assert [scope for _, scope, _ in recorder.calls] == ["allreduce", "allreduce"]


def test_an_explicit_client_wins_over_the_configured_one(recorder: Recorder) -> None:
    mine = Recorder()
    with expires(after=1, client=mine):
        pass
    assert len(mine.calls) == 2 and recorder.calls == []


def test_the_decorator_keeps_the_function_s_identity(recorder: Recorder) -> None:
    @expires(after=5)
    def step(x: int) -> int:
        """Doc."""
        return x * 2

    assert step(21) == 42
    assert step.__name__ == "step" and step.__doc__ == "Doc."


@pytest.mark.parametrize("after", [0, -1, float("inf"), float("nan"), True, "10"])
def test_after_must_be_a_positive_number(after: object) -> None:
    with pytest.raises(ValueError, match="positive number"):
        expires(after=after)  # type: ignore[arg-type]


def test_without_a_client_or_the_variable_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "_configured", None)
    monkeypatch.delenv("TORCHELASTIC_TIMER_FILE", raising=False)
    with pytest.raises(RuntimeError, match="TORCHELASTIC_TIMER_FILE"), expires(after=1):
        pass


def test_the_client_configures_itself_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(api, "_configured", None)
    monkeypatch.setenv("TORCHELASTIC_TIMER_FILE", "/nonexistent/timer.fifo")
    client = api._default_client()
    assert isinstance(client, expiry.FileTimerClient)
    assert client.file_path == "/nonexistent/timer.fifo"
