"""STOMP frame parsing without a regular expression per frame or per header.

stomp.py finds the end of a frame's headers and splits its lines with regular expressions, and
unescapes every header key and value with `re.sub`, even when it holds no backslash, which is
nearly always; on the receive path that was about a fifth of the server's CPU time.
`parse_frame` and `parse_headers` give the same frames (tests check that on any input) but find
and split by hand, unescape only where there is something to unescape, and copy the headers
without the `copy` module. `install()` puts them in place of stomp.py's.
"""

import re
import ssl
from typing import Any

import stomp.exception
import stomp.transport
import stomp.utils
from stomp.utils import Frame

_ESCAPE = re.compile(r"\\.")


def parse_headers(lines: list[str], offset: int = 0) -> dict[str, str]:
    headers: dict[str, str] = {}
    unescape = stomp.utils._unescape_header
    for line in lines[offset:]:
        # What stomp.py's HEADER_LINE_RE `(?P<key>[^:]+)[:](?P<value>.*)` matches, split by
        # hand: a non-empty key up to the first colon, the value up to a line feed.
        key, colon, value = line.partition(":")
        if not colon or not key:
            continue
        if "\\" in key:
            key = _unescape(key, unescape)
        if key not in headers:
            if "\n" in value:
                value = value[: value.index("\n")]
            if "\\" in value:
                value = _unescape(value, unescape)
            headers[key] = value
    return headers


def _unescape(text: str, unescape: Any) -> str:
    # ActiveMQ's message ids hold `\c` (an escaped colon), and nothing else to unescape.
    if text.count("\\") == text.count("\\c"):
        return text.replace("\\c", ":")
    return _ESCAPE.sub(unescape, text)


def _blank_line(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Where the headers of the frame in data[start:end] end and its body begins: at the first
    blank line (LF LF, or CR LF CR LF; stomp.py's PREAMBLE_END_RE); (-1, -1) without one."""
    lf = data.find(b"\n\n", start, end)
    crlf = data.find(b"\r\n\r\n", start, end)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def parse_frame(frame: bytes) -> Frame | None:
    """stomp.py's `parse_frame`: a frame's command, headers and body."""
    preamble_end, body_start = _blank_line(frame, 0, len(frame))
    if preamble_end < 0:
        preamble_end = body_start = len(frame)
    preamble = frame[:preamble_end].decode("utf-8", errors="replace")
    if "\r" in preamble:
        lines = stomp.utils.LINE_END_RE.split(preamble)
    else:
        lines = preamble.split("\n")
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first >= len(lines):
        return None
    made = Frame.__new__(Frame)
    made.cmd = lines[first]
    made.headers = parse_headers(lines, first + 1)
    made.original_headers = dict(made.headers)
    made.body = frame[body_start:]
    return made


_CONTENT_LENGTH = stomp.transport.BaseTransport._BaseTransport__content_length_re  # type: ignore[attr-defined]


def _content_length(buffer: bytes, start: int, end: int) -> int | None:
    """The content-length the headers in buffer[start:end] give, found as stomp.py's regular
    expression finds it (the first line that begins `content-length:`, blanks, digits), which
    runs only where the name is."""
    at = buffer.find(b"content-length", start, end)
    while at >= 0:
        if at == start or buffer[at - 1] == 10:  # at the beginning of a line
            found = _CONTENT_LENGTH.match(buffer[at:end])
            if found:
                return int(found.group("value"))
        at = buffer.find(b"content-length", at + 1, end)
    return None


def read(transport: Any) -> list[bytes]:
    """stomp.py's `BaseTransport.__read`: the next frames from the socket. stomp.py keeps what
    is left of its buffer by copying it after every frame (for a read of many small frames, a
    copy of most of the read per frame) and gathers a read in a BytesIO; this finds the frames
    at offsets in one buffer and keeps the rest once. The same frames and the same buffer left
    for any reads (tests check that)."""
    chunks = []
    eol = transport._BaseTransport__is_eol
    while transport.running:
        try:
            try:
                c = transport.receive()
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                break
            except stomp.exception.InterruptedException:
                continue
        except Exception:
            c = b""
        if c is None or len(c) == 0:
            if not transport.blocking:
                break
            raise stomp.exception.ConnectionClosedException()
        if eol(c) and not transport._BaseTransport__recvbuf and not chunks:
            return [c]  # a heartbeat
        chunks.append(c)
        if b"\x00" in c:
            break
    buffer = transport._BaseTransport__recvbuf + b"".join(chunks)
    result: list[bytes] = []
    if buffer and transport.running:
        start = 0
        size = len(buffer)
        while True:
            end = buffer.find(b"\x00", start)
            if end < 0:
                break
            preamble_end, body_start = _blank_line(buffer, start, end)
            length = None if preamble_end < 0 else _content_length(buffer, start, preamble_end)
            if length is not None:
                # A body of content-length bytes may hold NULs: the frame ends after it.
                frame_end = body_start + length
                if frame_end > end:
                    if frame_end >= size:
                        break  # the rest of it is still to come
                    end = frame_end
            result.append(buffer[start:end])
            start = end + 1
            # Optional EOLs after a frame.
            while True:
                if eol(buffer[start : start + 1]):
                    start += 1
                elif eol(buffer[start : start + 2]):
                    start += 2
                else:
                    break
        buffer = buffer[start:]
    transport._BaseTransport__recvbuf = buffer
    return result


_original_headers = stomp.utils.parse_headers
_original_frame = stomp.utils.parse_frame
_original_read = stomp.transport.BaseTransport._BaseTransport__read  # type: ignore[attr-defined]


def install() -> None:
    stomp.utils.parse_headers = parse_headers
    stomp.utils.parse_frame = parse_frame
    # The transport took its own name for it (`from stomp.utils import *`).
    stomp.transport.parse_frame = parse_frame
    stomp.transport.BaseTransport._BaseTransport__read = read  # type: ignore[attr-defined]
