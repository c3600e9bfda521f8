"""The examples shipped in examples/ keep working as README shows them."""

from __future__ import annotations

import datetime
import pathlib
import re
import signal

from tests.e2e.support import connect, receive_until_closed

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def test_time_app_answers_time_and_reverses(reverserd) -> None:
    process = reverserd("--foreground", "-y", str(EXAMPLES / "time_app.py"),
                        env={"TIME_APP_PORT": "0"})
    process.wait_for_log(r"application time-reverser")
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    with connect(process.port) as sock:
        sock.sendall(b"hello\r\ntime\r\nquit\r\n")
        hello, time_line, rest = receive_until_closed(sock).split(b"\r\n")
    after = datetime.datetime.now(datetime.UTC)
    assert hello == b"olleh"
    assert rest == b""
    told = datetime.datetime.fromisoformat(time_line.decode())
    assert before <= told <= after
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_readme_shows_the_example_as_it_is_in_examples() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    example = (EXAMPLES / "time_app.py").read_text()
    assert any("class TimeReverser" in block and block in example for block in blocks)


def test_the_two_file_layout_serves_and_names_its_process(reverserd) -> None:
    process = reverserd("-n", "-y", str(EXAMPLES / "reverse_app.py"),
                        env={"REVERSE_APP_PORT": "0"})
    with connect(process.port) as sock:
        sock.sendall(b"hello\nshout\nhello\nquit\n")
        assert receive_until_closed(sock) == b"olleh\nOK, SHOUTING\nOLLEH\n"
    assert pathlib.Path(f"/proc/{process.pid}/comm").read_text() == "reverse-app\n"
    process.signal(signal.SIGTERM)
    assert process.wait() == 0


def test_readme_shows_the_application_file_as_it_is() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    example = (EXAMPLES / "reverse_app.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert any("reverse_service(" in block and block in example for block in blocks)
