"""The library's error type."""


class RandomLTDError(ValueError):
    """A model or argument that random-LTD cannot work with; the message says what to change."""
