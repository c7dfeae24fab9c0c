"""Errors raised by the bound functions."""

SUPPORTED_LAYERS_TEXT = (
    "Linear, Conv2d, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, BatchNorm1d/2d (eval), "
    "Dropout (eval), Identity, bounds.InputNormalization and nested nn.Sequential containers"
)


class UnsupportedLayerError(TypeError):
    """A layer that the bound engine cannot bound.

    The message names the layer type, its dotted path in the model (``features.3``) and, when given, why it is
    refused, then says what the user can do, so the user knows exactly which module to replace.

    Args:
        layer_type: The layer's type name, possibly with the offending setting (``MaxPool2d(return_indices=True)``).
        path: The dotted path of the module in the model (``""`` for the model itself).
        reason: Why the layer is refused (optional).
    """

    def __init__(self, layer_type: str, path: str, reason: str = "") -> None:
        self.layer_type = layer_type
        self.path = path
        self.reason = reason
        where = path if path else "<root>"
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"Unsupported layer {layer_type} at '{where}'{why}. The bound engine supports exactly these types: "
            f"{SUPPORTED_LAYERS_TEXT}. A subclass of them, a module with its own forward or a module with forward "
            "hooks is refused, since its forward may compute anything. To certify this model, write it as a "
            "(nested) nn.Sequential of the supported layers, e.g. nn.Sequential(nn.Flatten(), nn.Linear(784, 100), "
            "nn.ReLU(), nn.Linear(100, 10)), and load the same weights into it."
        )
