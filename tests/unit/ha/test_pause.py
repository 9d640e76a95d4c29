import time

from reporting.ha.pause import PauseDetector


def test_a_gap_between_ticks_is_a_pause_distrusted_for_a_while(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    detector = PauseDetector(gap_s=0.5, distrust_s=2.0)
    detector.tick()
    clock[0] += 0.1
    detector.tick()
    assert not detector.suspect() and detector.pauses == 0
    clock[0] += 3.0  # frozen: no tick for 3 s
    assert detector.suspect(), "a late tick is itself a sign of a pause"
    detector.tick()
    assert detector.pauses == 1 and detector.suspect()
    for _ in range(19):  # running normally again, ticking every 0.1 s
        clock[0] += 0.1
        detector.tick()
    assert detector.suspect(), "distrusted for 2 s after the pause"
    clock[0] += 0.2
    detector.tick()
    assert not detector.suspect() and detector.pauses == 1


def test_the_thread_ticks() -> None:
    detector = PauseDetector(gap_s=0.5, distrust_s=1.0, tick_s=0.01)
    detector.start()
    try:
        deadline = time.monotonic() + 5
        while detector.suspect() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not detector.suspect()
    finally:
        detector.stop()
