"""The project's own error types: what a user can get wrong, reported as one line naming the
file, key or value. Anything else is a bug and keeps its traceback (CLI and stages alike)."""


class FerpipeError(ValueError):
    """A user-facing problem; the message is one line that names what is wrong and what to do."""


class ImageError(FerpipeError):
    """A picture that can't be used (empty, damaged, over the pixel limit, wrong shape)."""


class ModelError(FerpipeError):
    """A model that can't be loaded or used (not a .keras file, wrong input, no class names)."""
