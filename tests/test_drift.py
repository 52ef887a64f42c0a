"""Drift: loading labelled files. The flow-level check (a shifted copy of a bundled data set
warrants a new cycle, the same data does not) runs on the explore tests' search, in
tests/test_explore.py, to share its cycles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from factory_lib.ops.drift import load_labelled


def test_labelled_files_load(tmp_path: Path) -> None:
    x, y = np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 0])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    (tmp_path / "d.csv").write_text("a,b,label\n0,1,0\n2,3,1\n4,5,0\n")
    for name in ("d.npz", "d.csv"):
        lx, ly = load_labelled(tmp_path / name)
        assert lx.tolist() == x.tolist() and ly.tolist() == y.tolist()
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_labelled(tmp_path / "bad.npz")
