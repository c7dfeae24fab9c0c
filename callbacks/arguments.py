"""Checks of the callbacks' constructor arguments shared by both callbacks (each raises a ``ValueError``)."""

from collections.abc import Sequence


def check_model_attribute(model_attribute: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate ``model_attribute`` and normalise it to a tuple of dotted attribute paths (or ``None``)."""
    if model_attribute is None:
        return None
    names = (model_attribute,) if isinstance(model_attribute, str) else tuple(model_attribute)
    if not names or any(not isinstance(name, str) or not name or name.startswith(".") for name in names):
        raise ValueError(f"model_attribute must be a dotted attribute name or a non-empty list of them, got "
                         f"{model_attribute!r}")
    return names


def check_input_range(input_range: Sequence[float] | None) -> tuple[float, float] | None:
    """Validate an optional ``(low, high)`` input range."""
    if input_range is None:
        return None
    if len(input_range) != 2 or not float(input_range[0]) < float(input_range[1]):
        raise ValueError(f"input_range must be (low, high) with low < high, got {input_range!r}")
    return float(input_range[0]), float(input_range[1])


def check_positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise a ``ValueError`` unless ``value`` is an ``int`` (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
