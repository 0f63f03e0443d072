"""Input echoed back in error messages: cut short, so a 5 MB line is not printed whole."""

from __future__ import annotations

ECHO_CHARS = 80


def clip(text: str, limit: int = ECHO_CHARS, *, quote: bool = True) -> str:
    """``text`` for an error message: quoted (repr, so control characters show), and when
    longer than ``limit`` characters cut there with an ellipsis and its full length."""
    shown = text[:limit]
    rendered = repr(shown) if quote else shown
    if len(text) <= limit:
        return rendered
    return f"{rendered}… ({len(text):,} characters)"
