"""Text clean-up shared by the source modules: whitespace and length."""

from __future__ import annotations

# Texts are kept short: the default fine-tune runs on CPU, and echo doubles every input.
MAX_WORDS = 100


def truncate_words(text: str, max_words: int = MAX_WORDS) -> str:
    """Collapse whitespace and keep the first ``max_words`` words."""
    return " ".join(text.split()[:max_words])


def normalized(text: str) -> str:
    """Lower-cased, whitespace-collapsed form used to detect the same text across splits."""
    return " ".join(text.lower().split())


def truncate_keeping_lines(text: str, max_words: int = MAX_WORDS) -> str:
    """Keep whole lines (with their indentation) while they fit in ``max_words`` words.

    For code, where collapsing whitespace would destroy the layout. A first line longer
    than the budget is cut to it.
    """
    kept: list[str] = []
    words = 0
    for line in text.splitlines():
        words += len(line.split())
        if words > max_words:
            break
        kept.append(line)
    return "\n".join(kept) if kept else truncate_words(text, max_words)
