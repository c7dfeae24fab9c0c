"""The interval value every node of the bound graph carries: a box kept as ends or as centre and radius."""

from torch import Tensor


class Box:
    """An interval kept lazily as ``(lower, upper)`` or ``(mid, rad)``, converting only when an operator needs it.

    Affine operators work in centre-radius form (Amoeba Theorem 1 with two products instead of four), monotone
    ones on the ends; keeping whichever form the last operator produced avoids conversions in chains of either.
    """

    __slots__ = ("lower", "upper", "mid", "rad")

    def __init__(self, lower: Tensor | None = None, upper: Tensor | None = None, mid: Tensor | None = None,
                 rad: Tensor | None = None) -> None:
        self.lower, self.upper, self.mid, self.rad = lower, upper, mid, rad

    def ends(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)``."""
        if self.lower is None or self.upper is None:
            assert self.mid is not None and self.rad is not None
            self.lower, self.upper = self.mid - self.rad, self.mid + self.rad
        return self.lower, self.upper

    def centre_radius(self) -> tuple[Tensor, Tensor]:
        """``(mid, rad)`` with ``rad >= 0``."""
        if self.mid is None or self.rad is None:
            assert self.lower is not None and self.upper is not None
            self.mid = (self.upper + self.lower) / 2
            self.rad = ((self.upper - self.lower) / 2).clamp_min(0)
        return self.mid, self.rad

    def map_same(self, fn: "object") -> "Box":
        """Apply an entry-rearranging map (reshape, identity, concatenation of one) to whichever form is kept."""
        if self.mid is not None and self.rad is not None:
            return Box(mid=fn(self.mid), rad=fn(self.rad))  # type: ignore[operator]
        lower, upper = self.ends()
        return Box(lower=fn(lower), upper=fn(upper))  # type: ignore[operator]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the bounded tensor."""
        tensor = self.lower if self.lower is not None else self.mid
        assert tensor is not None
        return tuple(tensor.shape)

    def like(self) -> Tensor:
        """A tensor of the bounded tensor's shape, dtype and device (for shape, dtype and device queries)."""
        tensor = self.lower if self.lower is not None else self.mid
        assert tensor is not None
        return tensor
