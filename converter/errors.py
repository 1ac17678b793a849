"""Errors the converter reports to a user: each says what is wrong and what to do."""


class ConversionError(Exception):
    """A source the converter cannot turn into a model folder, with a message a user can act on."""
