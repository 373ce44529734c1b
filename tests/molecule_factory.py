"""Random small molecules for tests (a plain module, imported by the test files that need it)."""

from __future__ import annotations

import numpy as np

from molkrr import Molecules


def random_molecules(n: int, seed: int) -> Molecules:
    """n small random H/C/N/O molecules (3–6 atoms, at least 0.9 Å apart) with random energies."""
    rng = np.random.default_rng(seed)
    numbers, positions = [], []
    for _ in range(n):
        k = int(rng.integers(3, 7))
        z = rng.choice([1, 6, 7, 8], size=k)
        while True:
            r = rng.normal(scale=1.2, size=(k, 3))
            d = np.linalg.norm(r[:, None] - r[None], axis=-1) + 10 * np.eye(k)
            if d.min() > 0.9:
                break
        numbers.append(z)
        positions.append(r)
    return Molecules.from_list(numbers, positions, rng.normal(size=n))
