"""Shared pytest setup: run from the repository root so configs/ and the top-level scripts import."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests use tiny tensors, for which one intra-op thread is much faster than two on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder, so default paths (logs/, checkpoints/, data/) never touch the repo."""
    monkeypatch.chdir(tmp_path)
