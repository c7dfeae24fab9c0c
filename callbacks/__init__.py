"""Drop-in Lightning callbacks: Amoeba certified bounds and ACTS scores of a fixed validation subset."""

from callbacks.acts import ACTSCallback
from callbacks.amoeba_bounds import AmoebaBoundCallback

__all__ = ["ACTSCallback", "AmoebaBoundCallback"]
