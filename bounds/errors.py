"""Errors raised by the bound functions."""


class UnsupportedLayerError(TypeError):
    """A layer or operator that the bound engine cannot bound.

    The message names the operator (a layer type such as ``LSTM``, or a call such as ``torch.exp``), its dotted
    module path in the model (``features.3``), the source line of the call where tracing knows it, and why it is
    refused; then it lists what the engine supports, so the user knows exactly what to replace.

    Args:
        layer_type: The layer's type or the operator's name, possibly with the offending setting
            (``MaxPool2d(return_indices=True)``).
        path: The dotted path of the module in the model (``""`` for the model itself).
        reason: Why it is refused (optional).
        source: ``file:line`` of the call in the model's code, where tracing knows it (optional).
    """

    def __init__(self, layer_type: str, path: str, reason: str = "", source: str = "") -> None:
        self.layer_type = layer_type
        self.path = path
        self.reason = reason
        self.source = source
        where = path if path else "<root>"
        line = f" ({source})" if source else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"Unsupported layer {layer_type} at '{where}'{line}{why}. The bound engine traces the model's forward "
            f"(torch.fx) and bounds exactly these operators: {_supported_text()}. Replace the operator by supported "
            "ones (the README's 'Supported operators' lists every spelling), or certify a submodule without it."
        )


def _supported_text() -> str:
    from bounds.engine.registry import supported_operators  # the registry imports this module

    return "; ".join(title for title, _, _ in supported_operators())
