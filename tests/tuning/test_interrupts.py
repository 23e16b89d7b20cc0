import signal

import pytest

from search.tuning import interrupts


class _RaisesInItsFinalizer:
    def __init__(self, sig):
        self.sig = sig

    def __del__(self):
        signal.raise_signal(self.sig)  # the handler runs here, inside the finalizer


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_a_finalizer_swallowed_is_raised_again_at_the_next_check(sig):
    with interrupts.signals_unwind():
        _RaisesInItsFinalizer(sig)  # freed at once: Python prints the exception and drops it
        with pytest.raises(KeyboardInterrupt) as e:
            interrupts.check()
    assert isinstance(e.value, interrupts.Terminated) == (sig == signal.SIGTERM)


def test_a_handled_signal_is_not_raised_again():
    with interrupts.signals_unwind():
        with pytest.raises(interrupts.Terminated) as e:
            signal.raise_signal(signal.SIGTERM)
        assert interrupts.caught(e.value) == "SIGTERM"
        interrupts.check()  # nothing pending: returns


def test_the_previous_handlers_come_back_after_the_block():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupts.signals_unwind():
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_worker_ignores_ctrl_c_and_unwinds_on_sigterm():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        interrupts.install_worker_handlers()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        with pytest.raises(interrupts.Terminated) as e:
            signal.raise_signal(signal.SIGTERM)
        assert interrupts.caught(e.value) == "SIGTERM"
    finally:
        for s, h in before.items():
            signal.signal(s, h)
