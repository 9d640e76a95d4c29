"""replay's progress line: carriage returns only on a terminal, whole lines elsewhere."""

import io

from reporting.commands.replay import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    stream = Terminal()
    progress = Progress(stream)
    for n in range(3):
        progress.show(f"{n}/3 records")
    progress.end("replayed 3 records")
    assert stream.getvalue() == "\r0/3 records\r1/3 records\r2/3 records\rreplayed 3 records\n"


def test_elsewhere_whole_lines_at_most_every_few_seconds() -> None:
    stream = io.StringIO()  # a pipe or a file: not a terminal
    progress = Progress(stream, every_s=60.0)
    for n in range(100):
        progress.show(f"{n}/100 records")
    progress.end("replayed 100 records")
    assert "\r" not in stream.getvalue()
    assert stream.getvalue().splitlines() == ["0/100 records", "replayed 100 records"]


def test_every_line_when_the_interval_has_passed() -> None:
    stream = io.StringIO()
    progress = Progress(stream, every_s=0.0)
    progress.show("1/2 records")
    progress.show("2/2 records")
    progress.fail("replay: gave up after 5 s")
    assert stream.getvalue() == "1/2 records\n2/2 records\nreplay: gave up after 5 s\n"
