"""The reports of ``certify.py``: options, example selection, running (one Lightning test loop) and rendering.

- :mod:`reporting.options`: the ``certify:`` group (:class:`CertifyOptions`), nesting each report's options class;
- :mod:`reporting.selection`: which test examples are scored;
- :mod:`reporting.running`: :class:`CertificationTask`, certification and both reports per batch through
  ``trainer.test``, gathered across ranks with :mod:`callbacks.gathering`;
- :mod:`reporting.rendering`: the certification report (``summary.json``, ``radii.pt``, figures, TensorBoard);
- :mod:`reporting.attacks`: the attacks report (Amoeba Table 4): ``options``, ``running``, ``rendering``;
- :mod:`reporting.acts`: the ACTS protocol report with CLEVER: ``options``, ``running``, ``summary``, ``tables``,
  ``rendering``.

Imports: :mod:`bounds` (the computations) and :mod:`callbacks` (figures, gathering across ranks); nothing from
:mod:`datamodules`, :mod:`lightning_modules` or the scripts, and neither of those packages imports it (only
``cli.py`` and ``certify.py`` do).
"""

from reporting.options import CertifyOptions
from reporting.running import CertificationTask

__all__ = ["CertificationTask", "CertifyOptions"]
