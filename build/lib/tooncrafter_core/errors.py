"""The error every layer raises for inputs that cannot be used; hosts show its message as it is."""


class InputError(ValueError):
    """Inputs that cannot be interpolated or animated; the message names the input and the fix."""
