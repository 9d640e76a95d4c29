"""A broker login (user and password) as ActiveMQ reads it from a STOMP CONNECT frame.

STOMP 1.2 leaves CONNECT's headers unescaped, and stomp.py sends them as they are, but ActiveMQ
undoes the escapes `\\\\`, `\\c` and `\\n` in them as in any other frame (`\\r` only once 1.2 is
agreed, which it is not yet), trims blanks from both ends of each value, and reads a header line
of at most MAX_HEADER_BYTES. So a backslash is sent doubled, and what cannot be sent unchanged
(a line break, blanks around it, more than the line holds) is refused before it is sent, as a
credential to fix, rather than reaching the broker as another login.
"""

# The longest header line ActiveMQ's STOMP codec reads (StompWireFormat.MAX_HEADER_LENGTH).
MAX_HEADER_BYTES = 10240
# What Java's String.trim() takes from the ends of a header value: every character up to a space.
_TRIMMED = "".join(chr(code) for code in range(0x21))


def connect_value(text: str) -> str:
    """`text` as a CONNECT header value that ActiveMQ reads back as `text` (for a `text` that
    login_problem passes)."""
    return text.replace("\\", "\\\\")


def login_problem(header: str, text: str) -> str | None:
    """Why `text` cannot reach ActiveMQ unchanged as the CONNECT header `header` (login,
    passcode), or None. The reason never repeats the text."""
    if any(char in text for char in "\r\n\0"):
        return "holds a line break or a NUL, which a STOMP login cannot carry"
    if text != text.strip(_TRIMMED):
        return "has blanks or control characters at its start or end, which ActiveMQ trims"
    if len(f"{header}:{connect_value(text)}".encode()) >= MAX_HEADER_BYTES:
        return f"is longer than the {MAX_HEADER_BYTES} bytes ActiveMQ reads of a header line"
    return None


def login_refusal(user: str | None, password: str | None) -> tuple[str, str] | None:
    """("user" or "password", why) for the first of the login's values that cannot reach
    ActiveMQ unchanged, or None; a value of None is one not given."""
    for what, header, text in (("user", "login", user), ("password", "passcode", password)):
        reason = None if text is None else login_problem(header, text)
        if reason is not None:
            return what, reason
    return None
