"""Data loaders: embedded mnist5k and full MNIST from a local folder."""

from __future__ import annotations

import subprocess

import pytest
import torch

from bilevel_diffusion.data.mnist import load_mnist, load_mnist5k
from bilevel_diffusion.errors import ConfigError


def test_mnist5k_is_a_fixed_stratified_split_in_unit_range() -> None:
    data = load_mnist5k(heldout_per_class=100, seed=0)
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert float(data.train_x.min()) == -1.0 and float(data.train_x.max()) == 1.0
    assert torch.bincount(data.test_y, minlength=10).tolist() == [100] * 10
    again = load_mnist5k(heldout_per_class=100, seed=0)
    assert torch.equal(data.test_x, again.test_x), "the held-out split must be fixed"
    train_rows = {tuple(row.tolist()) for row in data.train_x.flatten(1)[:, ::7]}
    assert not any(tuple(row.tolist()) in train_rows for row in data.test_x.flatten(1)[:50, ::7])


def test_batches_come_from_the_generator() -> None:
    data = load_mnist5k()
    a, _ = data.batch(8, torch.Generator().manual_seed(1))
    b, _ = data.batch(8, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (8, 1, 28, 28)


def test_missing_mnist_folder_names_the_path_and_the_flag(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"data\.download=true") as err:
        load_mnist(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)


def test_full_mnist_reads_a_local_idx_folder(tmp_path) -> None:
    import gzip
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 3)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
        with gzip.open(raw / f"{split}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        with gzip.open(raw / f"{split}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">II", 2049, n) + bytes(range(n)))
    subprocess.run(["gunzip", "-k", *map(str, raw.glob("*.gz"))], check=True)
    data = load_mnist(str(tmp_path))
    assert data.train_x.shape == (6, 1, 28, 28) and data.test_x.shape == (3, 1, 28, 28)
    assert -1.0 <= float(data.train_x.min()) and float(data.train_x.max()) <= 1.0
    assert data.test_y.tolist() == [0, 1, 2]


def test_mnist5k_cache_gives_the_same_digits_and_a_damaged_cache_is_rebuilt(tmp_path) -> None:
    from bilevel_diffusion.data.mnist import _embedded_digits

    parsed = load_mnist5k(cache_dir=tmp_path)
    cache = tmp_path / "data" / "mnist5k.safetensors"
    assert cache.is_file()
    _embedded_digits.cache_clear()
    cached = load_mnist5k(cache_dir=tmp_path)
    assert torch.equal(parsed.train_x, cached.train_x) and torch.equal(parsed.test_y, cached.test_y)
    cache.write_bytes(b"not a safetensors file")
    _embedded_digits.cache_clear()
    rebuilt = load_mnist5k(cache_dir=tmp_path)
    assert torch.equal(parsed.test_x, rebuilt.test_x) and cache.stat().st_size > 1000
