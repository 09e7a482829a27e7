"""Progress text shared by the commands (no Keras or TensorFlow import)."""


def format_duration(seconds):
    """`seconds` as `42s`, `3m07s` or `2h05m`.

    Args:
        seconds: A non-negative number.

    Returns:
        The text.
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
