"""Tests of rulegym.envs.data: real datasets (when RULEGYM_DATA is set) and generated files.

Real-data tests assert the true counts and label histograms listed in ../shared/data/README.md.
Generated-file tests build small IDX / tar.gz / zip / text files in tmp_path and point the
checksum table at them, to exercise every error path without the real data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from datagen import cifar_batch, cifar_tar

import rulegym.envs.data as data
from rulegym.envs.data import (
    CHARSET,
    ChecksumError,
    CorruptDataError,
    DataError,
    MissingDataError,
    cache_dir,
    encode_text,
    load_image_dataset,
    load_omniglot,
    load_text,
    resolve_data_root,
)
from rulegym.envs.data import decoded_cache, digests, fetch, gutenberg, idx, omniglot, sources
from rulegym.envs.data.sources import Source

REAL_DATA = os.environ.get("RULEGYM_DATA", "").strip()


# ============================================================================ fixtures/helpers

@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> pathlib.Path:
    """One decode cache for all real-data tests, so each dataset is decoded once per session."""
    return tmp_path_factory.mktemp("real-decoded")


@pytest.fixture
def real_root(real_cache, monkeypatch) -> pathlib.Path:
    if not REAL_DATA:
        pytest.skip("RULEGYM_DATA is not set; set RULEGYM_DATA=../shared/data to run the real-data tests")
    root = resolve_data_root(REAL_DATA)
    if not root.is_dir():
        pytest.skip(f"RULEGYM_DATA={REAL_DATA!r} is not a folder ({root})")
    monkeypatch.setenv("RULEGYM_DATA", str(root))
    monkeypatch.setenv("RULEGYM_CACHE", str(real_cache))
    monkeypatch.setenv("RULEGYM_OFFLINE", "1")
    return root


@pytest.fixture
def iso(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty data root, a private decode cache, offline, and no memoised results."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("RULEGYM_DATA", str(root))
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RULEGYM_OFFLINE", "1")
    decoded_cache.clear_memo()
    digests.clear_digest_memo()
    yield root
    decoded_cache.clear_memo()


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5_of(path: pathlib.Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def register(monkeypatch, relpath: str, path: pathlib.Path | None = None, *, urls=(), sha256=None,
             md5=None, **kw) -> Source:
    """Point the checksum table entry for ``relpath`` at a generated file (sha256 of ``path``)."""
    if path is not None and sha256 is None and md5 is None:
        sha256 = sha256_of(path)
    src = Source(relpath, "Test set", tuple(urls), md5=(md5,) if md5 else (),
                 sha256=(sha256,) if sha256 else (), **kw)
    monkeypatch.setitem(sources.SOURCES, relpath, src)
    return src


def idx_bytes(arr: np.ndarray, *, magic: bytes | None = None) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    head = magic if magic is not None else bytes([0, 0, codes[big.dtype], arr.ndim])
    return head + struct.pack(f">{arr.ndim}I", *arr.shape) + big.tobytes()


def write_gz(path: pathlib.Path, payload: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def make_mnist_like(root: pathlib.Path, monkeypatch, folder="mnist", prefix="train", *, n=7, h=4, w=6,
                    n_classes=10, seed=0, images=None, labels=None, label_payload=None,
                    image_payload=None, rel_prefix=None):
    """Write an images/labels IDX .gz pair and register both in the checksum table."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    if labels is None:
        labels = (np.arange(n) % n_classes).astype(np.uint8)
    rel_prefix = rel_prefix or f"{folder}/{prefix}"
    img_rel, lab_rel = f"{rel_prefix}-images-idx3-ubyte.gz", f"{rel_prefix}-labels-idx1-ubyte.gz"
    img = write_gz(root / img_rel, image_payload if image_payload is not None else idx_bytes(images))
    lab = write_gz(root / lab_rel, label_payload if label_payload is not None else idx_bytes(labels))
    register(monkeypatch, img_rel, img)
    register(monkeypatch, lab_rel, lab)
    return images, labels, img, lab


# ================================================================================ real data

def test_mnist_counts_and_histograms(real_root):
    train = load_image_dataset("mnist", "train")
    test = load_image_dataset("mnist", "test")
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert train.labels.dtype == np.int64 and train.n_classes == 10
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert not train.images.flags.writeable and not train.labels.flags.writeable
    assert train.class_names == tuple("0123456789") and (train.name, train.split) == ("mnist", "train")
    assert load_image_dataset("mnist", "train") is train  # one shared copy per process


def test_fashion_mnist_counts(real_root):
    train = load_image_dataset("fashion_mnist", "train")
    test = load_image_dataset("fashion_mnist", "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


def test_kmnist_test_counts(real_root):
    test = load_image_dataset("kmnist", "test")
    assert test.images.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_kmnist_train_images_missing_offline(real_root):
    with pytest.raises(MissingDataError) as info:
        load_image_dataset("kmnist", "train")
    msg = str(info.value)
    expected = real_root / "kmnist" / "train-images-idx3-ubyte.gz"
    assert "train-images-idx3-ubyte.gz" in msg and str(expected) in msg
    assert "codh.rois.ac.jp" in msg and "RULEGYM_DATA" in msg and "RULEGYM_OFFLINE" in msg
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DataError)
    assert not expected.exists()


def test_emnist_mnist_test(real_root):
    test = load_image_dataset("emnist", "test", variant="mnist")
    assert test.images.shape == (10000, 28, 28) and test.n_classes == 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names == tuple("0123456789")


def test_emnist_byclass_test(real_root):
    test = load_image_dataset("emnist", "test")  # byclass is the default variant
    assert test.images.shape == (116323, 28, 28) and test.n_classes == 62
    hist = np.bincount(test.labels, minlength=62)
    assert hist[:10].tolist() == [5778, 6330, 5869, 5969, 5619, 5190, 5705, 6139, 5633, 5686]
    assert hist.min() > 0 and len(hist) == 62
    assert test.class_names[:11] == tuple("0123456789A") and test.class_names[-1] == "z"


def test_emnist_is_upright(real_root):
    """EMNIST stores images transposed. Upright class means must match MNIST's class means
    better than the transposed ones do, for every digit; and the mean '1' is a vertical stroke."""
    emnist = load_image_dataset("emnist", "test", variant="mnist")
    mnist = load_image_dataset("mnist", "test")
    for c in range(10):
        e = emnist.images[emnist.labels == c].mean(axis=0)
        m = mnist.images[mnist.labels == c].mean(axis=0)
        upright = np.corrcoef(e.ravel(), m.ravel())[0, 1]
        transposed = np.corrcoef(e.T.ravel(), m.ravel())[0, 1]
        assert upright > transposed, (c, upright, transposed)
    one = emnist.images[emnist.labels == 1].mean(axis=0)
    # A vertical stroke: ink concentrated in a few columns, spread over the rows.
    assert one.mean(axis=0).var() > 3 * one.mean(axis=1).var()


@pytest.mark.parametrize("split,alphabets,characters,images", [
    ("background", 30, 964, 19280), ("evaluation", 20, 659, 13180)])
def test_omniglot_counts(real_root, split, alphabets, characters, images):
    s = load_omniglot(split)
    assert s.images.shape == (images, 105, 105) and s.images.dtype == np.uint8
    assert len(s.alphabet_names) == alphabets and s.n_classes == characters and s.split == split
    assert np.bincount(s.labels).tolist() == [20] * characters
    assert np.unique(s.alphabets).tolist() == list(range(alphabets))
    assert set(np.unique(s.images[:50]).tolist()) == {0, 255}
    assert s.images[:200].mean() < 0.2 * 255  # strokes are sparse: background must be 0
    assert not s.images.flags.writeable
    # labels are grouped by alphabet: each character belongs to exactly one alphabet
    pairs = np.unique(np.stack([s.labels, s.alphabets], axis=1), axis=0)
    assert len(pairs) == characters


def test_text_real(real_root):
    text = load_text()
    assert len(text) == 207798
    assert text.startswith("the wonderful wizard of oz\n\nby l. frank baum")
    assert text.endswith("i’m so glad to be at home again!”")
    assert "\r" not in text and "\ufeff" not in text and text == text.lower()
    codes = encode_text(text)
    assert codes.dtype == np.uint8 and codes.shape == (len(text),)
    assert np.unique(codes).tolist() == list(range(27))
    assert len(CHARSET) == 27


def test_every_shared_file_verifies(real_root):
    """The checksum table accepts every file in the shared data that it lists."""
    present = [rel for rel in sources.SOURCES if (real_root / rel).is_file()]
    assert len(present) >= 20
    for rel in present:
        path, tag = fetch.ensure_file(rel)
        assert path == real_root / rel and ":" in tag
    omni = fetch.ensure_file("omniglot/images_background.zip")[1]
    assert omni.startswith("content-sha256:")  # the re-packed zip is accepted by its PNG content


# ============================================================================ embedded default

def test_digits_need_no_data_root(iso):
    assert not any(iso.iterdir())
    full = load_image_dataset("digits", "all")
    assert full.images.shape == (1797, 8, 8) and full.images.dtype == np.uint8
    assert np.bincount(full.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert full.images.max() == 255 and full.images.min() == 0
    train, test = load_image_dataset("digits", "train"), load_image_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), full.labels)
    from sklearn.datasets import load_digits
    raw = load_digits().images
    np.testing.assert_array_equal(full.images, np.rint(raw * 255 / 16).astype(np.uint8))
    assert not any(iso.iterdir())  # nothing was downloaded or written into the data root


# ================================================================================ API checks

def test_unknown_names_list_valid_choices(iso):
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_image_dataset("fashion")
    with pytest.raises(ValueError, match="train, test"):
        load_image_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="balanced"):
        load_image_dataset("emnist", "test", variant="capitals")
    with pytest.raises(ValueError, match="only meaningful for emnist"):
        load_image_dataset("mnist", variant="byclass")
    with pytest.raises(ValueError, match="background, evaluation"):
        load_omniglot("training")


def test_resolve_data_root_and_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RULEGYM_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("RULEGYM_DATA")
    assert resolve_data_root() == tmp_path / "xdg" / "rulegym" / "data"
    monkeypatch.chdir(tmp_path)
    assert resolve_data_root("rel") == tmp_path / "rel"
    monkeypatch.delenv("RULEGYM_CACHE", raising=False)
    assert cache_dir() == tmp_path / "xdg" / "rulegym" / "decoded"
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_encode_text_and_charset():
    assert CHARSET == "abcdefghijklmnopqrstuvwxyz "
    np.testing.assert_array_equal(encode_text("abc xyz!\n"), [0, 1, 2, 26, 23, 24, 25, 26, 26])
    # non-ASCII characters are one code each; upper case is not a..z
    np.testing.assert_array_equal(encode_text("é’A"), [26, 26, 26])
    assert encode_text("").shape == (0,)


def test_gutenberg_header_and_footer_are_stripped():
    raw = ("\ufeffThe Project Gutenberg eBook of X\r\n\r\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\r\n"
           "\r\nBody line one.\r\nBody two.\r\n\r\nEnd of the Project Gutenberg EBook of X\r\n"
           "*** END OF THE PROJECT GUTENBERG EBOOK X ***\r\nLicence text\r\n").encode("utf-8")
    assert gutenberg.normalise_text(raw) == "Body line one.\nBody two."
    assert gutenberg.normalise_text("\ufeffNo markers\r\nhere\r\n".encode()) == "No markers\nhere"


# =============================================================================== IDX format

def test_idx_round_trip(tmp_path):
    for arr in [np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array([3, 1, 2], np.uint8),
                np.arange(-6, 6, dtype=np.int16).reshape(3, 4), np.linspace(0, 1, 5).astype(np.float32),
                np.arange(4, dtype=np.int32) * -70000, np.arange(3, dtype=np.float64)]:
        path = write_gz(tmp_path / f"a{arr.dtype}{arr.ndim}.gz", idx_bytes(arr))
        out = idx.read_idx(path)
        assert out.shape == arr.shape and out.dtype == arr.dtype.newbyteorder("=")
        np.testing.assert_array_equal(out, arr)
    assert idx.read_idx_header(path) == (np.dtype(">f8"), (3,))


def test_mnist_layout_round_trip(iso, monkeypatch):
    images, labels, *_ = make_mnist_like(iso, monkeypatch, n=9)
    s = load_image_dataset("mnist", "train")
    np.testing.assert_array_equal(s.images, images)
    np.testing.assert_array_equal(s.labels, labels)
    assert s.labels.dtype == np.int64 and not s.images.flags.writeable


def _corrupt_cases():
    good_images = np.zeros((5, 4, 4), np.uint8)
    good = idx_bytes(good_images)
    return {
        "bad-magic": dict(image_payload=b"\x01\x02\x08\x03" + good[4:]),
        "unknown-type": dict(image_payload=b"\x00\x00\x07\x03" + good[4:]),
        "body-too-short": dict(image_payload=good[:-3]),
        "body-too-long": dict(image_payload=good + b"\x00"),
        "header-truncated": dict(image_payload=good[:10]),
        "count-mismatch": dict(images=np.zeros((6, 4, 4), np.uint8), labels=np.zeros(5, np.uint8)),
        "labels-out-of-range": dict(images=good_images, labels=np.array([0, 1, 2, 10, 3], np.uint8)),
        "labels-not-1d": dict(images=good_images, label_payload=idx_bytes(np.zeros((5, 1), np.uint8))),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_corrupt_idx_files_raise(iso, monkeypatch, case):
    kw = _corrupt_cases()[case]
    kw.setdefault("images", np.zeros((5, 4, 4), np.uint8))
    kw.setdefault("labels", np.zeros(5, np.uint8))
    make_mnist_like(iso, monkeypatch, **kw)
    with pytest.raises(CorruptDataError) as info:
        load_image_dataset("mnist", "train")
    assert "idx" in str(info.value).lower() or "label" in str(info.value).lower()
    assert "mnist/train-" in str(info.value)


def test_truncated_gzip_raises(iso, monkeypatch):
    _, _, img, _ = make_mnist_like(iso, monkeypatch, n=50, h=28, w=28)
    full = img.read_bytes()
    img.write_bytes(full[: len(full) // 2])
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", img)  # checksum of the truncated file
    with pytest.raises(CorruptDataError, match="truncated or damaged"):
        load_image_dataset("mnist", "train")
    img.write_bytes(b"not gzip at all")
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", img)
    with pytest.raises(CorruptDataError, match="gzip"):
        load_image_dataset("mnist", "train")


# ================================================================================ checksums

def test_wrong_checksum_raises_and_keeps_file(iso, monkeypatch):
    _, _, img, _ = make_mnist_like(iso, monkeypatch)
    actual = sha256_of(img)
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", sha256="0" * 64, urls=("https://example.org/x.gz",))
    with pytest.raises(ChecksumError) as info:
        load_image_dataset("mnist", "train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "0" * 64 in msg and actual in msg
    assert "Delete" in msg and "https://example.org/x.gz" in msg
    assert isinstance(info.value, ValueError) and img.exists()


def test_md5_is_accepted_and_any_listed_digest_matches(iso, monkeypatch):
    _, _, img, _ = make_mnist_like(iso, monkeypatch)
    monkeypatch.setitem(sources.SOURCES, "mnist/train-images-idx3-ubyte.gz", Source(
        "mnist/train-images-idx3-ubyte.gz", "t", md5=("f" * 32, md5_of(img)), sha256=("e" * 64,)))
    assert load_image_dataset("mnist", "train").images.shape == (7, 4, 6)


def test_file_without_any_checksum_is_refused(iso, monkeypatch):
    make_mnist_like(iso, monkeypatch)
    monkeypatch.setitem(sources.SOURCES, "mnist/train-images-idx3-ubyte.gz",
                        Source("mnist/train-images-idx3-ubyte.gz", "t"))
    with pytest.raises(ChecksumError, match="no checksum is known"):
        load_image_dataset("mnist", "train")


def test_changed_file_is_rehashed(iso, monkeypatch):
    """The verification memo is keyed by (path, size, mtime): a replaced file is checked again."""
    _, _, img, _ = make_mnist_like(iso, monkeypatch)
    load_image_dataset("mnist", "train")
    data_bytes = bytearray(img.read_bytes())
    data_bytes[-9] ^= 0xFF  # same size, different content (inside the gzip CRC/body)
    img.write_bytes(bytes(data_bytes))
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    decoded_cache.clear_memo()
    with pytest.raises(ChecksumError):
        load_image_dataset("mnist", "train")


def test_missing_file_offline(iso, monkeypatch):
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", sha256="a" * 64, urls=("https://example.org/t.gz",))
    with pytest.raises(MissingDataError) as info:
        load_image_dataset("mnist", "train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg
    assert str(iso / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert "https://example.org/t.gz" in msg and "RULEGYM_DATA" in msg and "RULEGYM_OFFLINE" in msg


# ================================================================================ downloads

@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("RULEGYM_OFFLINE", raising=False)


def test_download_via_file_url(iso, online, tmp_path, monkeypatch):
    server = tmp_path / "server"
    images, labels, img, lab = make_mnist_like(server, monkeypatch)
    for f in (img, lab):
        rel = f"mnist/{f.name}"
        register(monkeypatch, rel, f, urls=(f.as_uri(),))
    s = load_image_dataset("mnist", "train")
    np.testing.assert_array_equal(s.images, images)
    assert (iso / "mnist" / img.name).read_bytes() == img.read_bytes()
    assert sorted(p.name for p in (iso / "mnist").iterdir()) == sorted([img.name, lab.name])  # no temp files
    # readable by the other users of a shared root, as a plain open() would make it
    umask = os.umask(0)
    os.umask(umask)
    assert (iso / "mnist" / img.name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_download_falls_back_to_next_url(iso, online, tmp_path, monkeypatch):
    server = tmp_path / "server"
    _, _, img, lab = make_mnist_like(server, monkeypatch)
    for f in (img, lab):
        register(monkeypatch, f"mnist/{f.name}", f, urls=((tmp_path / "nope.gz").as_uri(), f.as_uri()))
    assert len(load_image_dataset("mnist", "train")) == 7


def test_download_with_wrong_checksum_leaves_nothing(iso, online, tmp_path, monkeypatch):
    server = tmp_path / "server"
    _, _, img, _ = make_mnist_like(server, monkeypatch)
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", sha256="b" * 64, urls=(img.as_uri(),))
    with pytest.raises(ChecksumError) as info:
        load_image_dataset("mnist", "train")
    assert "nothing was written" in str(info.value)
    dest_dir = iso / "mnist"
    assert not (dest_dir / img.name).exists()
    assert not dest_dir.exists() or list(dest_dir.iterdir()) == []


def test_download_network_failure(iso, online, tmp_path, monkeypatch):
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", sha256="c" * 64,
             urls=((tmp_path / "absent.gz").as_uri(),))
    with pytest.raises(MissingDataError) as info:
        load_image_dataset("mnist", "train")
    msg = str(info.value)
    assert "Downloading it failed" in msg and "absent.gz" in msg
    assert not (iso / "mnist").exists()  # the folder it made for the file is gone with it
    (iso / "mnist").mkdir()  # one that was there before stays, empty or not
    with pytest.raises(MissingDataError):
        load_image_dataset("mnist", "train")
    assert (iso / "mnist").is_dir() and not list((iso / "mnist").iterdir())


def test_download_into_unwritable_root(tmp_path, online, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("RULEGYM_CACHE", str(tmp_path / "cache"))
    server = tmp_path / "server"
    _, _, img, _ = make_mnist_like(server, monkeypatch)
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", img, urls=(img.as_uri(),))
    root = blocker / "data"  # cannot be created: its parent is a file
    with pytest.raises(MissingDataError) as info:
        load_image_dataset("mnist", "train", root=root)
    assert "not writable" in str(info.value) and str(root / "mnist") in str(info.value)


def test_existing_good_file_is_never_replaced(iso, online, tmp_path, monkeypatch):
    _, _, img, _ = make_mnist_like(iso, monkeypatch)
    before = img.read_bytes()
    register(monkeypatch, "mnist/train-images-idx3-ubyte.gz", img, urls=((tmp_path / "x.gz").as_uri(),))
    load_image_dataset("mnist", "train")
    assert img.read_bytes() == before


# =========================================================================== EMNIST archive

def _emnist_archive(tmp_path: pathlib.Path, variant="letters", n=6):
    images = np.random.default_rng(1).integers(0, 256, size=(n, 5, 3), dtype=np.uint8)
    labels = (np.arange(n) % 26 + 1).astype(np.uint8)  # Letters labels are 1..26
    stored = images.transpose(0, 2, 1)  # EMNIST stores each image transposed
    mapping = "".join(f"{i} {64 + i} {96 + i}\r\n" for i in range(1, 27))
    zpath = tmp_path / "server" / "gzip.zip"
    zpath.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(f"gzip/emnist-{variant}-test-images-idx3-ubyte.gz", gzip.compress(idx_bytes(stored)))
        zf.writestr(f"gzip/emnist-{variant}-test-labels-idx1-ubyte.gz", gzip.compress(idx_bytes(labels)))
        zf.writestr(f"gzip/emnist-{variant}-mapping.txt", mapping)
    return images, labels, zpath


def _register_emnist(monkeypatch, zpath, variant="letters"):
    register(monkeypatch, sources.EMNIST_ARCHIVE, md5=md5_of(zpath), urls=(zpath.as_uri(),))
    for kind in ("test-images-idx3-ubyte.gz", "test-labels-idx1-ubyte.gz", "mapping.txt"):
        rel = f"emnist/emnist-{variant}-{kind}"
        monkeypatch.setitem(sources.SOURCES, rel, Source(rel, "EMNIST", archive=sources.EMNIST_ARCHIVE))


def test_emnist_members_extracted_from_verified_archive(iso, online, tmp_path, monkeypatch):
    images, labels, zpath = _emnist_archive(tmp_path)
    _register_emnist(monkeypatch, zpath)
    s = load_image_dataset("emnist", "test", variant="letters")
    np.testing.assert_array_equal(s.images, images)  # transposed back to upright
    np.testing.assert_array_equal(s.labels, labels.astype(np.int64) - 1)
    assert s.n_classes == 26 and s.class_names[0] == "Aa" and s.class_names[25] == "Zz"
    manifest = fetch.read_manifest(iso / "emnist")
    for kind in ("test-images-idx3-ubyte.gz", "test-labels-idx1-ubyte.gz", "mapping.txt"):
        name = f"emnist-letters-{kind}"
        assert manifest[name]["sha256"] == sha256_of(iso / "emnist" / name)
    umask = os.umask(0)
    os.umask(umask)
    for path in (iso / "emnist").iterdir():  # extracted members and the manifest alike
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    # a later run verifies the members through the manifest, with the archive gone and offline
    (iso / sources.EMNIST_ARCHIVE).unlink()
    monkeypatch.setenv("RULEGYM_OFFLINE", "1")
    decoded_cache.clear_memo()
    digests.clear_digest_memo()
    assert len(load_image_dataset("emnist", "test", variant="letters")) == 6


def test_emnist_member_without_checksum_or_manifest_is_refused(iso, monkeypatch, tmp_path):
    images, labels, zpath = _emnist_archive(tmp_path)
    _register_emnist(monkeypatch, zpath)
    with zipfile.ZipFile(zpath) as zf:  # members put there by hand, not by rulegym
        for info in zf.infolist():
            (iso / "emnist").mkdir(exist_ok=True)
            (iso / "emnist" / info.filename.split("/")[-1]).write_bytes(zf.read(info))
    with pytest.raises(ChecksumError) as info:
        load_image_dataset("emnist", "test", variant="letters")
    assert ".manifest.json" in str(info.value) and "gzip.zip" in str(info.value)


def test_emnist_missing_offline_names_member_and_archive(iso, monkeypatch, tmp_path):
    _, _, zpath = _emnist_archive(tmp_path)
    _register_emnist(monkeypatch, zpath)
    with pytest.raises(MissingDataError) as info:
        load_image_dataset("emnist", "test", variant="letters")
    msg = str(info.value)
    assert "emnist-letters-test-images-idx3-ubyte.gz" in msg and "gzip.zip" in msg
    assert str(iso / "emnist") in msg


# =================================================================================== CIFAR-10

def test_cifar10_generated_archive(iso, monkeypatch):
    rng = np.random.default_rng(3)
    content = {}
    payloads = {}
    for name, n in [*((f"data_batch_{i}", 3) for i in range(1, 6)), ("test_batch", 4)]:
        content[name] = cifar_batch(rng, n)
        payloads[name] = pickle.dumps({b"batch_label": b"x", b"data": content[name][0],
                                       b"labels": content[name][1], b"filenames": [b"a"] * n}, protocol=4)
    payloads["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=4)
    tar = cifar_tar(iso / "cifar-10" / "cifar-10-python.tar.gz", payloads)
    register(monkeypatch, "cifar-10/cifar-10-python.tar.gz", md5=md5_of(tar))
    train = load_image_dataset("cifar10", "train")
    test = load_image_dataset("cifar10", "test")
    assert train.images.shape == (15, 32, 32, 3) and test.images.shape == (4, 32, 32, 3)
    raw = np.concatenate([content[f"data_batch_{i}"][0] for i in range(1, 6)])
    # channel-first rows: value of pixel (r, c) of channel ch is at ch*1024 + r*32 + c
    for i, r, c, ch in [(0, 0, 0, 0), (4, 5, 31, 1), (14, 31, 7, 2)]:
        assert train.images[i, r, c, ch] == raw[i, ch * 1024 + r * 32 + c]
    np.testing.assert_array_equal(train.labels, sum((content[f"data_batch_{i}"][1] for i in range(1, 6)), []))
    np.testing.assert_array_equal(test.labels, content["test_batch"][1])
    assert train.class_names[0] == "airplane" and train.n_classes == 10


def _py2_batch_pickle(data_arr: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 cPickle wrote CIFAR-10: protocol 2, py2 ``str`` keys and
    array payload (SHORT_BINSTRING / BINSTRING), ``numpy.core.multiarray._reconstruct``."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    n = data_arr.shape[0]
    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    arr = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
           + b"(" + i(1) + i(n) + i(3072) + b"\x86" + dtype + b"\x89" + s(data_arr.tobytes()) + b"tb")
    labs = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + arr + s(b"labels") + labs + b"u."


def test_cifar10_python2_pickles(iso, monkeypatch):
    rng = np.random.default_rng(4)
    content = {f"data_batch_{k}": cifar_batch(rng, 2) for k in range(1, 6)}
    content["test_batch"] = cifar_batch(rng, 2)
    tar = cifar_tar(iso / "cifar-10" / "cifar-10-python.tar.gz",
                     {k: _py2_batch_pickle(*v) for k, v in content.items()})
    register(monkeypatch, "cifar-10/cifar-10-python.tar.gz", md5=md5_of(tar))
    test = load_image_dataset("cifar10", "test")
    np.testing.assert_array_equal(test.images, content["test_batch"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(test.labels, content["test_batch"][1])


class _Evil:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_malicious_pickle_is_not_executed(iso, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=4)
    tar = cifar_tar(iso / "cifar-10" / "cifar-10-python.tar.gz", {"test_batch": evil})
    register(monkeypatch, "cifar-10/cifar-10-python.tar.gz", md5=md5_of(tar))
    with pytest.raises(CorruptDataError, match="system"):
        load_image_dataset("cifar10", "test")
    assert not marker.exists()


def test_cifar10_missing_batch_and_bad_archive(iso, monkeypatch):
    rng = np.random.default_rng(5)
    d, lab = cifar_batch(rng, 2)
    tar = cifar_tar(iso / "cifar-10" / "cifar-10-python.tar.gz",
                     {"data_batch_1": pickle.dumps({b"data": d, b"labels": lab}, protocol=4)})
    register(monkeypatch, "cifar-10/cifar-10-python.tar.gz", md5=md5_of(tar))
    with pytest.raises(CorruptDataError, match="data_batch_2"):
        load_image_dataset("cifar10", "train")
    tar.write_bytes(tar.read_bytes()[:40])
    register(monkeypatch, "cifar-10/cifar-10-python.tar.gz", md5=md5_of(tar))
    with pytest.raises(CorruptDataError, match="truncated or damaged"):
        load_image_dataset("cifar10", "train")


# =================================================================================== Omniglot

def _png(mark: int) -> bytes:
    im = Image.new("1", (105, 105), 1)  # white background
    for x in range(mark, mark + 3):
        im.putpixel((x, 2 * mark), 0)  # black stroke pixels
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


_OMNI_LAYOUT = {("Beta", "character01"): 2, ("Alpha", "character02"): 3, ("Alpha", "character01"): 2}


def _omniglot_zip(path: pathlib.Path, *, compression=zipfile.ZIP_DEFLATED, bad: str | None = None,
                  split="background") -> dict[str, int]:
    """Write an Omniglot-layout zip; return {member name: mark} (mark locates the stroke)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    marks = {}
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr(f"images_{split}/", b"")
        k = 0
        for (alpha, char), count in _OMNI_LAYOUT.items():  # deliberately unsorted
            for j in range(count):
                k += 1
                name = f"images_{split}/{alpha}/{char}/{k:04d}_{j + 1:02d}.png"
                marks[name] = k
                zf.writestr(name, b"garbage" if name == bad else _png(k))
    return marks


def test_omniglot_generated_zip(iso, monkeypatch):
    zpath = iso / "omniglot" / "images_background.zip"
    marks = _omniglot_zip(zpath)
    register(monkeypatch, "omniglot/images_background.zip", md5=md5_of(zpath))
    s = load_omniglot("background")
    assert s.images.shape == (7, 105, 105) and s.n_classes == 3
    assert s.alphabet_names == ("Alpha", "Beta")
    # sorted by alphabet, then character: Alpha/character01 (2), Alpha/character02 (3), Beta/character01 (2)
    assert s.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert s.alphabets.tolist() == [0, 0, 0, 0, 0, 1, 1]
    for i, name in enumerate(sorted(marks, key=lambda n: n.split("/")[1:])):
        k = marks[name]
        expected = np.zeros((105, 105), np.uint8)
        expected[2 * k, k:k + 3] = 255  # strokes 255, background 0
        np.testing.assert_array_equal(s.images[i], expected)
    assert not s.images.flags.writeable and not s.labels.flags.writeable


def test_omniglot_repacked_zip_accepted_by_content_digest(iso, monkeypatch, tmp_path):
    original = tmp_path / "orig.zip"
    _omniglot_zip(original)
    repacked = iso / "omniglot" / "images_background.zip"
    _omniglot_zip(repacked, compression=zipfile.ZIP_STORED)
    assert md5_of(original) != md5_of(repacked)
    content = digests.content_digest(original, sources.CONTENT_PNG_MEMBERS)
    register(monkeypatch, "omniglot/images_background.zip", md5=md5_of(original),
             content_kind=sources.CONTENT_PNG_MEMBERS, content_sha256=(content,))
    assert load_omniglot("background").n_classes == 3
    # a zip whose images differ is refused
    decoded_cache.clear_memo()
    with zipfile.ZipFile(repacked, "a") as zf:
        zf.writestr("images_background/Beta/character01/9999_99.png", _png(30))
    with pytest.raises(ChecksumError, match="content digest"):
        load_omniglot("background")


def test_omniglot_bad_png_and_bad_zip(iso, monkeypatch):
    zpath = iso / "omniglot" / "images_background.zip"
    _omniglot_zip(zpath, bad="images_background/Alpha/character02/0003_01.png")
    register(monkeypatch, "omniglot/images_background.zip", md5=md5_of(zpath))
    with pytest.raises(CorruptDataError, match="not a valid PNG"):
        load_omniglot("background")
    zpath.write_bytes(b"PK not really a zip")
    register(monkeypatch, "omniglot/images_background.zip", md5=md5_of(zpath))
    with pytest.raises(CorruptDataError, match="zip"):
        load_omniglot("background")


def _patch_first_member(zpath, patch):
    """Apply ``patch(data, local_header_offset, data_offset)`` to the bytes of zpath's first PNG."""
    data = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".png"))
    off = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[off + 26:off + 30])
    patch(data, off, off + 30 + name_len + extra_len, info)
    zpath.write_bytes(bytes(data))


def _broken_deflate(data, off, start, info):
    data[start] = 0x07  # a deflate block of the reserved type 3


def _unknown_method(data, off, start, info):
    central = next(at for at in range(len(data) - 46) if data[at:at + 4] == b"PK\x01\x02"
                   and struct.unpack("<I", data[at + 42:at + 46])[0] == off)
    for at in (off + 8, central + 10):  # the member's method, in its local and central header
        data[at:at + 2] = struct.pack("<H", 9)  # Deflate64, which zipfile cannot read


@pytest.mark.parametrize("damage", [_broken_deflate, _unknown_method])
def test_omniglot_zip_with_unreadable_member_is_corrupt_data(iso, monkeypatch, damage):
    zpath = iso / "omniglot" / "images_background.zip"
    _omniglot_zip(zpath)
    content = digests.content_digest(zpath, sources.CONTENT_PNG_MEMBERS)
    _patch_first_member(zpath, damage)
    # a re-packed copy is verified by its content, which reads every member ...
    register(monkeypatch, "omniglot/images_background.zip", md5="0" * 32,
             content_kind=sources.CONTENT_PNG_MEMBERS, content_sha256=(content,))
    with pytest.raises(CorruptDataError, match="zip"):
        load_omniglot("background")
    # ... and one that matches its checksum is read when decoded
    decoded_cache.clear_memo()
    digests.clear_digest_memo()
    register(monkeypatch, "omniglot/images_background.zip", md5=md5_of(zpath))
    with pytest.raises(CorruptDataError, match="zip"):
        load_omniglot("background")


# ============================================================================ decoded cache

def test_decoded_cache_is_written_and_reused(iso, monkeypatch, tmp_path):
    images, labels, img, _ = make_mnist_like(iso, monkeypatch, n=11)
    first = load_image_dataset("mnist", "train")
    entry = decoded_cache.entry_dir("idx", f"sha256:{sha256_of(img)}") / "data.npy"
    assert entry.is_file() and entry.is_relative_to(tmp_path / "cache")
    np.testing.assert_array_equal(np.load(entry), images)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    decoded_cache.clear_memo()  # as in a new process
    monkeypatch.setattr(idx, "read_idx", no_decoding)
    second = load_image_dataset("mnist", "train")
    assert second is not first
    np.testing.assert_array_equal(second.images, images)
    np.testing.assert_array_equal(second.labels, labels)
    assert not second.images.flags.writeable


def test_omniglot_cache_is_reused(iso, monkeypatch):
    zpath = iso / "omniglot" / "images_evaluation.zip"
    _omniglot_zip(zpath, split="evaluation")
    register(monkeypatch, "omniglot/images_evaluation.zip", md5=md5_of(zpath))
    first = load_omniglot("evaluation")
    decoded_cache.clear_memo()
    monkeypatch.setattr(omniglot, "decode_pngs", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    second = load_omniglot("evaluation")
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.alphabet_names == second.alphabet_names


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong-shape"])
def test_corrupt_cache_file_is_rebuilt(iso, monkeypatch, damage):
    images, _, img, _ = make_mnist_like(iso, monkeypatch, n=13)
    load_image_dataset("mnist", "train")
    entry = decoded_cache.entry_dir("idx", f"sha256:{sha256_of(img)}") / "data.npy"
    if damage == "garbage":
        entry.write_bytes(b"\x93NUMPY garbage")
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:-20])
    else:
        np.save(entry, np.zeros((13, 6, 4), np.uint8))  # loads fine, wrong shape
    decoded_cache.clear_memo()
    s = load_image_dataset("mnist", "train")
    np.testing.assert_array_equal(s.images, images)
    np.testing.assert_array_equal(np.load(entry), images)  # rewritten


def test_unwritable_cache_only_warns(iso, monkeypatch, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    monkeypatch.setenv("RULEGYM_CACHE", str(blocker / "cache"))
    images, *_ = make_mnist_like(iso, monkeypatch)
    with pytest.warns(RuntimeWarning, match="RULEGYM_CACHE"):
        s = load_image_dataset("mnist", "train")
    np.testing.assert_array_equal(s.images, images)


# ================================================================================ text files

def test_text_reissued_header_still_verifies(iso, monkeypatch, tmp_path):
    body = "Title\r\n\r\nOnce upon a time, Dorothy’s house flew.\r\n"
    v1 = f"\ufeffHeader v1\r\n*** START OF THE PROJECT GUTENBERG EBOOK 55 ***\r\n{body}*** END OF THE PROJECT GUTENBERG EBOOK 55 ***\r\nlicence v1"
    v2 = f"Header v2, longer\n\n*** START OF THIS PROJECT GUTENBERG EBOOK 55 ***\n\n\n{body.replace(chr(13), '')}\n*** END OF THIS PROJECT GUTENBERG EBOOK 55 ***\nlicence v2\n"
    rel = "text/wonderful-wizard-of-oz-pg55.txt"
    path = iso / rel
    path.parent.mkdir(parents=True)
    path.write_text(v1, encoding="utf-8", newline="")
    content = digests.content_digest(path, sources.CONTENT_TEXT_BODY)
    register(monkeypatch, rel, sha256="d" * 64, content_kind=sources.CONTENT_TEXT_BODY, content_sha256=(content,))
    assert load_text() == "title\n\nonce upon a time, dorothy’s house flew."
    path.write_text(v2, encoding="utf-8", newline="")
    decoded_cache.clear_memo()
    assert load_text() == "title\n\nonce upon a time, dorothy’s house flew."
    path.write_text(v2.replace("Dorothy", "Toto"), encoding="utf-8", newline="")
    decoded_cache.clear_memo()
    with pytest.raises(ChecksumError):
        load_text()


def test_public_api_names():
    for name in ["DataError", "MissingDataError", "ChecksumError", "CorruptDataError", "resolve_data_root",
                 "cache_dir", "ImageSet", "load_image_dataset", "OmniglotSet", "load_omniglot", "load_text",
                 "CHARSET", "encode_text"]:
        assert hasattr(data, name), name
    assert issubclass(MissingDataError, FileNotFoundError) and issubclass(ChecksumError, ValueError)
    assert issubclass(CorruptDataError, ValueError)
    assert all(issubclass(e, DataError) for e in (MissingDataError, ChecksumError, CorruptDataError))
