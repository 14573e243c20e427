"""The library's error types; every other module imports them from here."""


class RandomLTDError(ValueError):
    """A model or argument that random-LTD cannot work with; the message says what to change."""


class ConfigError(RandomLTDError):
    """An invalid setting. ``field`` names it, ``message`` says what is wrong and ``flag`` is the
    command-line flag that sets it (``--`` and the field with dashes).

    The text starts with the field (``"start: must be >= 1"``), or with the flag when the setting
    came from the command line (``as_flag=True``, as ``random_ltd.train`` raises it:
    ``"--kept-start: must be >= 1"``).
    """

    def __init__(self, field: str, message: str, as_flag: bool = False):
        self.field = field
        self.message = message
        self.as_flag = as_flag
        self.flag = "--" + field.replace("_", "-")
        super().__init__(f"{self.flag if as_flag else field}: {message}")

    def __reduce__(self):  # pickled across worker processes with its fields, not its text
        return type(self), (self.field, self.message, self.as_flag)
