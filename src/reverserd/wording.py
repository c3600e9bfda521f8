"""How numbers are written in messages to people (the log, ``status``, systemd's STATUS=)."""


def count(number: int, noun: str) -> str:
    """``1 line``, ``2 lines``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
