"""Errors raised by the bound functions."""


class UnsupportedLayerError(TypeError):
    """A layer that interval propagation cannot bound.

    The message names the layer type and its dotted path in the model (``features.3``), so the
    user knows exactly which module to replace.
    """

    def __init__(self, layer_type: str, path: str) -> None:
        self.layer_type = layer_type
        self.path = path
        where = path if path else "<root>"
        super().__init__(
            f"Unsupported layer {layer_type} at '{where}': interval propagation supports Linear, Conv2d, ReLU, "
            "LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, Flatten, BatchNorm1d/2d (eval), Dropout (eval), "
            "Identity, bounds.InputNormalization and nested Sequential containers."
        )
