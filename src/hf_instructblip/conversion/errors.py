"""The one exception type of the converter: the input cannot be converted faithfully."""


class ConversionError(ValueError):
    """A checkpoint, LLM or option that cannot be converted; the message names the input and what is wrong."""
