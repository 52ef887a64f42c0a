"""Write the example data sets the example objectives read (docs/data.md), from real data
that ships in packages: nothing is downloaded.

    python objectives/examples/make_data.py      # writes objectives/examples/data/

- `penguins.csv`: the Palmer penguins table (the `palmerpenguins` package's CSV, as it is:
  text columns and missing values) → objectives/penguins.yaml
- `digits_png/<digit>/<n>.png`: scikit-learn's 1,797 handwritten digits as 8×8 grayscale PNG
  files, one folder per class → objectives/digits_images.yaml
- `digits.npz`: the same digits as arrays `x` (N, 1, 8, 8) and `y` → objectives/digits_arrays.yaml

Safe to run again: it rewrites the same files.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data"


def penguins(out: Path) -> Path:
    src = resources.files("palmerpenguins") / "data" / "penguins.csv"
    dest = out / "penguins.csv"
    with resources.as_file(src) as path:
        shutil.copyfile(path, dest)
    return dest


def digits_png(out: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = out / "digits_png"
    shutil.rmtree(root, ignore_errors=True)
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)  # 0-16 → 0-255
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def digits_npz(out: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    dest = out / "digits.npz"
    np.savez_compressed(dest, x=digits.images[:, None].astype(np.float32), y=digits.target)
    return dest


def main(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [penguins(out), digits_png(out), digits_npz(out)]
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
