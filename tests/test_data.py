"""pegasus.data: every on-disk format round-trips, comes out upright, and bad input fails
with a DatasetError that names the file."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pegasus.data import DatasetError, ImageDataset, describe, load_dataset
from pegasus.data.synthetic import (
    CIFAR10_CLASSES,
    STL10_CLASSES,
    make_split,
    render_images,
    write_cifar10_binary,
    write_cifar10_python,
    write_image_folder,
    write_stl10_binary,
)

REAL_ARCHIVE = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10-jpg.tar.gz"
SPLIT_SEEDS = {"train": 0, "test": 1}  # the writers' seed for each split (seed=0)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def names(path: Path) -> str:
    """A regex matching the path in an error message."""
    return re.escape(str(path))


def pattern(n: int, h: int, w: int) -> np.ndarray:
    """uint8 [n, h, w, 3] where no two (image, row, column, channel) share a value pattern:
    any transpose, flip or channel swap changes the array."""
    i, y, x, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((i * 37 + y * 7 + x * 3 + c * 85) % 256).astype(np.uint8)


def make_tar(folder: Path, archive: Path, wrap: bool) -> Path:
    """Pack folder's train/ and test/ into archive, under one top-level folder if wrap."""
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        for split in ("train", "test"):
            tar.add(folder / split, arcname=f"wrapped/{split}" if wrap else split)
    return archive


def assert_split(ds: ImageDataset, images: np.ndarray, labels: np.ndarray, classes, fmt: str) -> None:
    assert ds.format == fmt
    assert ds.classes == list(classes)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("writer", [write_cifar10_python, write_cifar10_binary])
@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar10_round_trip(tmp_path, cache, writer, as_tar):
    source = writer(tmp_path, n_train=23, n_test=7, as_tar=as_tar)
    fmt = "cifar10-python" if writer is write_cifar10_python else "cifar10-binary"
    for split, n in (("train", 23), ("test", 7)):
        images, labels = make_split(n, 10, 32, SPLIT_SEEDS[split])
        for path in (source, tmp_path):  # the data set itself, or the folder holding it
            ds = load_dataset(path, split, cache_dir=cache)
            assert_split(ds, images, labels, CIFAR10_CLASSES, fmt)
            assert ds.source == str(source)
    assert not cache.exists()  # only image folders are cached


def test_cifar10_python_chw_order(tmp_path, cache):
    """Pixels stored as [N, 3*32*32] planes (R plane, G plane, B plane, each row-major)."""
    folder = write_cifar10_python(tmp_path, 5, 5)
    images = pattern(4, 32, 32)
    batch = {b"labels": [0, 1, 2, 9], b"data": images.transpose(0, 3, 1, 2).reshape(4, -1)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    assert_split(load_dataset(folder, "test", cache), images, [0, 1, 2, 9], CIFAR10_CLASSES, "cifar10-python")


def test_cifar10_python_numpy1_pickles(tmp_path, cache):
    """The official files were pickled by numpy 1.x, which names numpy.core.multiarray."""
    folder = write_cifar10_python(tmp_path, 10, 4)
    for path in folder.iterdir():
        data = path.read_bytes()
        assert b"numpy._core.multiarray" in data or path.name == "batches.meta"
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    images, labels = make_split(4, 10, 32, 1)
    assert_split(load_dataset(folder, "test", cache), images, labels, CIFAR10_CLASSES, "cifar10-python")


def test_cifar10_binary_chw_order(tmp_path, cache):
    folder = write_cifar10_binary(tmp_path, 5, 5)
    images = pattern(4, 32, 32)
    labels = np.array([[3], [0], [9], [1]], np.uint8)
    records = np.concatenate([labels, images.transpose(0, 3, 1, 2).reshape(4, -1)], axis=1)
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    assert_split(load_dataset(folder, "test", cache), images, [3, 0, 9, 1], CIFAR10_CLASSES, "cifar10-binary")


def test_stl10_round_trip(tmp_path, cache):
    folder = write_stl10_binary(tmp_path, n_train=5, n_test=3)
    for split, n in (("train", 5), ("test", 3)):
        images, labels = make_split(n, 10, 96, SPLIT_SEEDS[split])
        for path in (folder, tmp_path):
            assert_split(load_dataset(path, split, cache), images, labels, STL10_CLASSES, "stl10-binary")


def test_stl10_upright_unmirrored_and_memory_mapped(tmp_path, cache):
    folder = write_stl10_binary(tmp_path, 2, 2)
    image = np.zeros((96, 96, 3), np.uint8)
    image[..., 0] = np.arange(96, dtype=np.uint8)[None, :] * 2  # red: gradient left -> right
    image[..., 1] = 50  # green: constant, distinct from blue
    image[..., 2] = 100
    image[2:6, 3:8] = 255  # a bright patch only in the top-left area
    # The official layout, written independently of the package: per channel, column-major.
    planes = np.stack([image[..., c].T for c in range(3)])  # [3, W, H]
    (folder / "test_X.bin").write_bytes(planes.tobytes())
    (folder / "test_y.bin").write_bytes(bytes([10]))

    ds = load_dataset(folder, "test", cache)
    assert ds.images.shape == (1, 96, 96, 3) and ds.labels.tolist() == [9]
    np.testing.assert_array_equal(ds.images[0], image)
    out = ds.images[0]
    assert out[3, 4].tolist() == [255, 255, 255] and out[90, 90].tolist() == [180, 50, 100]
    assert (np.diff(out[50, 10:, 0].astype(int)) > 0).all()  # brightens to the right
    base = ds.images
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap), "images must be a view of the memory-mapped file"
    assert not ds.images.flags.writeable


@pytest.mark.parametrize("container", ["dir", ".tar", ".tar.gz", ".tgz", "wrapped.tar.gz"])
def test_image_folder_round_trip(tmp_path, cache, container):
    folder = write_image_folder(tmp_path / "src", n_per_class=2, classes=("b_cls", "a_cls", "c_cls"))
    source = folder
    if container != "dir":
        suffix = container.removeprefix("wrapped")
        source = make_tar(folder, tmp_path / f"data{suffix}", wrap=container.startswith("wrapped"))
    written_labels = np.repeat([0, 1, 2], 2)  # indices into ("b_cls", "a_cls", "c_cls")
    for split in ("train", "test"):
        written = render_images(written_labels, 32, SPLIT_SEEDS[split])
        # Classes are the sorted folder names (a, b, c), so a_cls's images come first.
        ds = load_dataset(source, split, cache)
        expected = written[[2, 3, 0, 1, 4, 5]]
        assert_split(ds, expected, written_labels, ["a_cls", "b_cls", "c_cls"], "image-folder")


def test_image_folder_writer_archive_and_jpeg(tmp_path, cache):
    archive = write_image_folder(tmp_path, n_per_class=3, size=20, ext="jpg", as_tar=True)
    assert archive.name == "image-folder.tar.gz"
    for path in (archive, tmp_path):
        ds = load_dataset(path, "train", cache)
        assert ds.images.shape == (30, 20, 20, 3) and ds.image_size == (20, 20)
        assert ds.classes == list(CIFAR10_CLASSES)
        assert ds.class_counts() == dict.fromkeys(CIFAR10_CLASSES, 3)


# ---------------------------------------------------------------- safety


@pytest.mark.parametrize("target", ["system", "eval"])
def test_malicious_pickle_is_refused_without_running(tmp_path, cache, target):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            if target == "system":
                return os.system, (f"touch {marker}",)
            return eval, (f"open({str(marker)!r}, 'w')",)

    folder = write_cifar10_python(tmp_path, 5, 5)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}, protocol=2))
    message = rf"{names(folder / 'test_batch')}.*forbidden global .*{target}"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "test", cache)
    assert not marker.exists()


# ---------------------------------------------------------------- cache


def test_second_load_comes_from_cache(tmp_path, cache, monkeypatch):
    archive = write_image_folder(tmp_path, n_per_class=2, as_tar=True)
    first = load_dataset(archive, "train", cache)
    entries = sorted(cache.iterdir())
    assert len(entries) == 2  # both splits decoded in the one pass
    assert {p.name for p in entries[0].iterdir()} == {"images.npy", "labels.npy", "meta.json"}
    mtimes = [p.stat().st_mtime_ns for e in entries for p in e.iterdir()]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(Image, "open", no_decoding)
    for split in ("train", "test"):
        again = load_dataset(archive, split, cache)
        assert len(again) == 20 and again.classes == first.classes
    np.testing.assert_array_equal(load_dataset(archive, "train", cache).images, first.images)
    assert [p.stat().st_mtime_ns for e in entries for p in e.iterdir()] == mtimes


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path, n_per_class=1)
    monkeypatch.setenv("PEGASUS_CACHE_DIR", str(tmp_path / "env-cache"))
    load_dataset(folder, "test")
    assert len(list((tmp_path / "env-cache").iterdir())) == 1
    monkeypatch.delenv("PEGASUS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_dataset(folder, "test")
    assert len(list((tmp_path / "xdg" / "pegasus").iterdir())) == 1


@pytest.mark.parametrize("container", ["dir", ".tar.gz"])
def test_corrupt_image_names_file_and_leaves_no_cache(tmp_path, cache, container):
    folder = write_image_folder(tmp_path / "src", n_per_class=2)
    bad = folder / "test" / "dog" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated mid-header
    source = folder if container == "dir" else make_tar(folder, tmp_path / "data.tar.gz", wrap=False)
    where = names(bad) if container == "dir" else names(source) + ":test/dog/0001.png"
    split = "test" if container == "dir" else "train"  # an archive decodes both splits in one pass
    with pytest.raises(DatasetError, match=where):
        load_dataset(source, split, cache)
    assert not cache.exists() or list(cache.rglob("*")) == []


def test_changed_source_invalidates_cache(tmp_path, cache):
    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("a", "b"))
    before = load_dataset(folder, "train", cache).images.copy()
    path = folder / "train" / "a" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(path)
    after = load_dataset(folder, "train", cache)
    assert (after.images[0] == 7).all() and not np.array_equal(after.images, before)

    archive = make_tar(folder, tmp_path / "data.tar", wrap=False)
    assert (load_dataset(archive, "train", cache).images[0] == 7).all()
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(path)
    make_tar(folder, archive, wrap=False)
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # mtime must move even on coarse clocks
    assert (load_dataset(archive, "train", cache).images[0] == 9).all()


# ---------------------------------------------------------------- bad input


def test_truncated_cifar10_binary(tmp_path, cache):
    folder = write_cifar10_binary(tmp_path, 10, 2)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    message = rf"{names(path)}.*multiple of the 3073-byte record.*got 6145 bytes"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "train", cache)


def test_truncated_cifar10_pickle(tmp_path, cache):
    archive = write_cifar10_python(tmp_path, 10, 2, as_tar=True)
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    members["cifar-10-batches-py/test_batch"] = members["cifar-10-batches-py/test_batch"][:100]
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    message = rf"{names(archive)}:cifar-10-batches-py/test_batch: .*could not unpickle"
    with pytest.raises(DatasetError, match=message):
        load_dataset(archive, "test", cache)


def test_truncated_stl10(tmp_path, cache):
    folder = write_stl10_binary(tmp_path, 2, 2)
    path = folder / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    message = rf"{names(path)}.*multiple of the 27648-byte image.*got 55291 bytes"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "train", cache)


def test_stl10_label_count_mismatch(tmp_path, cache):
    folder = write_stl10_binary(tmp_path, 3, 2)
    (folder / "train_y.bin").write_bytes(bytes([1, 2]))
    message = rf"{names(folder / 'train_y.bin')}: expected 3 labels.*got 2"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "train", cache)


@pytest.mark.parametrize("fmt", ["cifar10-python", "cifar10-binary", "stl10-binary"])
def test_label_out_of_range(tmp_path, cache, fmt):
    if fmt == "cifar10-python":
        folder = write_cifar10_python(tmp_path, 5, 2)
        path = folder / "test_batch"
        batch = {b"labels": [1, 10], b"data": np.zeros((2, 3072), np.uint8)}
        path.write_bytes(pickle.dumps(batch, protocol=2))
        shown = 10
    elif fmt == "cifar10-binary":
        folder = write_cifar10_binary(tmp_path, 5, 2)
        path = folder / "test_batch.bin"
        path.write_bytes(bytes([1] + [0] * 3072 + [10] + [0] * 3072))
        shown = 10
    else:
        folder = write_stl10_binary(tmp_path, 5, 2)
        path = folder / "test_y.bin"
        path.write_bytes(bytes([0, 3]))  # STL-10 labels are 1..10 on disk
        shown = 0
    with pytest.raises(DatasetError, match=rf"{names(path)}: label {shown} out of range"):
        load_dataset(folder, "test", cache)


@pytest.mark.parametrize(
    "writer, missing",
    [
        (write_cifar10_python, "test_batch"),
        (write_cifar10_binary, "test_batch.bin"),
        (write_stl10_binary, "test_X.bin"),
    ],
)
def test_missing_split_files(tmp_path, cache, writer, missing):
    folder = writer(tmp_path, 5, 2)
    (folder / missing).unlink()
    assert len(load_dataset(folder, "train", cache)) == 5
    with pytest.raises(DatasetError, match=rf"{names(folder)}: test split .*missing {missing}"):
        load_dataset(folder, "test", cache)


@pytest.mark.parametrize("container", ["dir", ".tar"])
def test_missing_split_folder(tmp_path, cache, container):
    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("a", "b"))
    for path in (folder / "test").rglob("*.png"):
        path.unlink()
    for path in (folder / "test").iterdir():
        path.rmdir()
    (folder / "test").rmdir()
    source = folder
    if container == ".tar":
        source = tmp_path / "data.tar"
        with tarfile.open(source, "w") as tar:
            tar.add(folder / "train", arcname="train")
    with pytest.raises(DatasetError, match=rf"{names(source)}: expected a test/ folder .*found train/"):
        load_dataset(source, "test", cache)


def test_empty_class_folder(tmp_path, cache):
    folder = write_image_folder(tmp_path, n_per_class=1, classes=("a", "b"))
    (folder / "train" / "c").mkdir()
    (folder / "test" / "c").mkdir()
    with pytest.raises(DatasetError, match=rf"{names(folder / 'train' / 'c')}/: empty class folder"):
        load_dataset(folder, "train", cache)


def test_mismatched_class_folders(tmp_path, cache):
    folder = write_image_folder(tmp_path, n_per_class=1, classes=("a", "b"))
    (folder / "test" / "b").rename(folder / "test" / "z")
    message = rf"{names(folder)}: train/ and test/ must hold the same class folders"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "test", cache)


def test_mixed_image_sizes(tmp_path, cache):
    folder = write_image_folder(tmp_path, n_per_class=2, classes=("a", "b"))
    odd = folder / "train" / "b" / "0001.png"
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(odd)
    first = folder / "train" / "a" / "0000.png"
    message = rf"mixed sizes.*{names(first)} is 32x32, {names(odd)} is 24x16"
    with pytest.raises(DatasetError, match=message):
        load_dataset(folder, "train", cache)
    assert not cache.exists()


def test_unknown_layout(tmp_path, cache):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "images").mkdir()
    message = rf"{names(tmp_path)}: no recognised data set; looked for .*cifar-10-batches-py.*found images/, notes.txt"
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path, "train", cache)
    message = rf"{names(tmp_path / 'notes.txt')}: expected a readable tar archive"
    with pytest.raises(DatasetError, match=message):
        load_dataset(tmp_path / "notes.txt", "train", cache)


def test_unrecognised_archive(tmp_path, cache):
    archive = tmp_path / "misc.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("docs/readme.txt")
        tar.addfile(info, io.BytesIO())
    message = rf"{names(archive)}: not a recognised .*found docs/readme.txt"
    with pytest.raises(DatasetError, match=message):
        load_dataset(archive, "train", cache)


def test_archive_must_end_after_its_last_member(tmp_path, cache):
    """tarfile stops without a word at a zero block or a bad header mid-stream; here, two
    archives concatenated, whose second half (test/) it would silently drop."""
    folder = write_image_folder(tmp_path / "src", n_per_class=1, classes=("a", "b"))
    halves = []
    for split in ("train", "test"):
        with tarfile.open(tmp_path / f"{split}.tar", "w") as tar:
            tar.add(folder / split, arcname=split)
        halves.append((tmp_path / f"{split}.tar").read_bytes())
    archive = tmp_path / "data.tar"
    archive.write_bytes(b"".join(halves))
    message = rf"{names(archive)}: expected the archive to end after member 'train/b/0000.png'"
    with pytest.raises(DatasetError, match=message):
        load_dataset(archive, "test", cache)


def test_corrupt_gzip_stream(tmp_path, cache):
    archive = write_image_folder(tmp_path, n_per_class=3, as_tar=True)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    archive.write_bytes(data)
    with pytest.raises(DatasetError, match=rf"{names(archive)}: expected"):
        load_dataset(archive, "test", cache)
    assert not cache.exists()


def test_nonexistent_path(tmp_path, cache):
    with pytest.raises(DatasetError, match=rf"{names(tmp_path / 'nope')}: no such file or folder"):
        load_dataset(tmp_path / "nope", "train", cache)


def test_ambiguous_parent_folder(tmp_path, cache):
    write_cifar10_python(tmp_path, 5, 2)
    write_cifar10_binary(tmp_path, 5, 2)
    with pytest.raises(DatasetError, match=rf"{names(tmp_path)}: expected one data set, found 2"):
        load_dataset(tmp_path, "train", cache)


def test_extracted_folder_preferred_over_archive_beside_it(tmp_path, cache):
    archive = write_cifar10_python(tmp_path, 5, 2, as_tar=True)
    folder = write_cifar10_python(tmp_path, 5, 2)
    assert load_dataset(tmp_path, "train", cache).source == str(folder) != str(archive)


def test_bad_split_name(tmp_path, cache):
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(write_cifar10_binary(tmp_path, 5, 2), "val", cache)


# ---------------------------------------------------------------- describe


def test_describe(tmp_path, cache):
    text = describe(write_stl10_binary(tmp_path, 4, 2), cache_dir=cache)
    assert "format: stl10-binary" in text
    assert "train: 4 images, 96x96, 10 classes" in text and "test: 2 images, 96x96" in text
    counts = load_dataset(tmp_path, "train", cache).class_counts()
    for name, n in counts.items():
        assert re.search(rf"^  {name} +{n}$", text, re.M)


def test_describe_reports_a_broken_split(tmp_path, cache):
    folder = write_cifar10_binary(tmp_path, 5, 2)
    (folder / "test_batch.bin").unlink()
    text = describe(folder, cache_dir=cache)
    assert "train: 5 images, 32x32" in text and "test: unavailable" in text and "test_batch.bin" in text


# ---------------------------------------------------------------- the real archive


@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason=f"{REAL_ARCHIVE} not present")
def test_real_cifar10_jpg_archive(cache):
    start = time.perf_counter()
    ds = load_dataset(REAL_ARCHIVE, "test", cache)
    decoded = time.perf_counter() - start
    start = time.perf_counter()
    again = load_dataset(REAL_ARCHIVE, "test", cache)
    cached = time.perf_counter() - start
    print(f"\n{REAL_ARCHIVE.name}: first load (decodes both splits) {decoded:.1f} s, cached {cached * 1e3:.1f} ms")
    for d in (ds, again):
        assert d.images.shape == (10_000, 32, 32, 3) and d.format == "image-folder"
        assert d.classes == list(CIFAR10_CLASSES)
        assert d.class_counts() == dict.fromkeys(CIFAR10_CLASSES, 1000)
    np.testing.assert_array_equal(ds.images[::97], again.images[::97])
