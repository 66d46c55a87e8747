"""IDX reader and writer: round trips, image/label layouts, and a one-line DataError for every malformed file."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from aelab.errors import DataError
from aelab.idx import parse_idx, read_idx, read_images, read_labels, write_idx

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _idx_bytes(array: np.ndarray, tmp_path) -> bytes:
    """The uncompressed IDX encoding of ``array``, as write_idx makes it."""
    path = tmp_path / "encode.idx"
    write_idx(path, array)
    return path.read_bytes()


def _assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message.strip()
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(5, 7, 6), (3, 4, 5, 3)])
def test_uint8_round_trip(tmp_path, suffix, shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"images.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_gz_name_writes_gzip_and_plain_name_does_not(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress((tmp_path / "a.gz").read_bytes()) == (tmp_path / "a").read_bytes()
    # header: two zero bytes, type 0x08, 3 dims, then big-endian uint32 sizes
    assert (tmp_path / "a").read_bytes()[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_other_dtypes_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(-30, 30).reshape(3, 4, 5) * 3).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        array = array / 7
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_multibyte_values_are_stored_big_endian(tmp_path):
    write_idx(tmp_path / "x", np.array([1, 256], dtype=np.int32))
    raw = (tmp_path / "x").read_bytes()
    assert raw[2] == 0x0C and raw[8:] == b"\0\0\0\x01\0\0\x01\0"


def test_write_rejects_dtype_idx_cannot_store(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


@FAST
@given(array=arrays(np.uint8, array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)),
       gz=st.booleans())
def test_round_trip_random_uint8(tmp_path, array, gz):
    path = tmp_path / ("r.gz" if gz else "r")
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


# --- images and labels -------------------------------------------------------------------------

def test_read_images_adds_channel_axis_to_nhw(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, size=(4, 5, 6), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", array)
    images = read_images(tmp_path / "x.gz")
    assert images.shape == (4, 1, 5, 6) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0], array)


def test_read_images_moves_channels_first_for_nhwc(tmp_path):
    array = np.random.default_rng(2).integers(0, 256, size=(4, 5, 6, 3), dtype=np.uint8)
    write_idx(tmp_path / "x", array)
    images = read_images(tmp_path / "x")
    assert images.shape == (4, 3, 5, 6) and images.flags.c_contiguous
    np.testing.assert_array_equal(images[2, 1], array[2, :, :, 1])


def test_read_images_refuses_channels_other_than_grey_or_rgb(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 5, 6, 4), dtype=np.uint8))       # RGBA, or 4 bands
    with pytest.raises(DataError, match=r"need C = 1 \(grey\) or 3 \(RGB\)"):
        read_images(tmp_path / "x")


def test_read_labels_gives_int64(tmp_path):
    write_idx(tmp_path / "y.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    labels = read_labels(tmp_path / "y.gz")
    assert labels.dtype == np.int64
    assert labels.tolist() == [3, 1, 4, 1, 5]


@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_read_images_rejects_too_few_dimensions(tmp_path, shape):
    write_idx(tmp_path / "x", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        read_images(tmp_path / "x")
    _assert_one_line(err, "3 or 4 dimensions")


def test_read_images_rejects_non_uint8(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 3, 3), dtype=np.float32))
    with pytest.raises(DataError) as err:
        read_images(tmp_path / "x")
    _assert_one_line(err, "unsigned bytes", "float32")


def test_read_labels_rejects_two_dimensions(tmp_path):
    write_idx(tmp_path / "y", np.zeros((4, 2), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        read_labels(tmp_path / "y")
    _assert_one_line(err, "1 dimension", "[4, 2]")


# --- malformed files ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nope.gz")
    _assert_one_line(err, "not found", "nope.gz")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path)
    _assert_one_line(err, "cannot read")


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x03", b"\x00\x00\x07\x03", b"\x00\x00\x08\x00",
                                  b"\x00\x00\x08\x05", b"PK\x03\x04"])
def test_wrong_magic_number(tmp_path, head):
    (tmp_path / "x").write_bytes(head + bytes(40))
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x")
    _assert_one_line(err, "not an IDX file", f"0x{int.from_bytes(head, 'big'):08X}")


def test_too_short_for_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\0\0")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x")
    _assert_one_line(err, "not an IDX file", "2 bytes")


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_data(tmp_path, gz):
    raw = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8), tmp_path)[:-5]
    path = tmp_path / "t"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError) as err:
        read_idx(path)
    _assert_one_line(err, "truncated", "[3, 4, 4]", "48", "43")


def test_extra_trailing_bytes(tmp_path):
    raw = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8), tmp_path) + b"\0\0"
    (tmp_path / "x").write_bytes(raw)
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x")
    _assert_one_line(err, "disagree", "[3, 4, 4]", "48", "50")


def test_truncated_header(tmp_path):
    raw = _idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8), tmp_path)[:10]
    (tmp_path / "x").write_bytes(raw)
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x")
    _assert_one_line(err, "truncated IDX header")


def test_corrupt_gzip_body(tmp_path):
    good = gzip.compress(_idx_bytes(np.arange(64, dtype=np.uint8).reshape(1, 8, 8), tmp_path))
    (tmp_path / "x.gz").write_bytes(good[:10] + b"garbage, not deflate data" * 4)
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x.gz")
    _assert_one_line(err, "corrupt gzip")


def test_truncated_gzip_stream(tmp_path):
    good = gzip.compress(_idx_bytes(np.arange(64, dtype=np.uint8).reshape(1, 8, 8), tmp_path))
    (tmp_path / "x.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x.gz")
    _assert_one_line(err, "corrupt gzip")


def test_gzip_with_bad_checksum(tmp_path):
    good = bytearray(gzip.compress(_idx_bytes(np.arange(64, dtype=np.uint8).reshape(1, 8, 8), tmp_path)))
    good[-8] ^= 0xFF   # the CRC-32 of the trailer
    (tmp_path / "x.gz").write_bytes(bytes(good))
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "x.gz")
    _assert_one_line(err, "corrupt gzip")


def test_header_whose_size_overflows_int64_is_rejected():
    # 2**16 ** 4 == 2**64: a 64-bit product would wrap to 0 and "match" an empty body
    raw = bytes([0, 0, 0x08, 4]) + (2 ** 16).to_bytes(4, "big") * 4
    with pytest.raises(DataError, match="too large"):
        parse_idx(raw)


def test_an_empty_array_whose_other_sizes_numpy_cannot_hold_is_rejected():
    # found by the property test below: [0, 2**28, 2**28, 2**24] is empty, but numpy refuses the shape
    raw = bytes([0, 0, 0x08, 4]) + b"".join(d.to_bytes(4, "big") for d in (0, 2**28, 2**28, 2**24))
    with pytest.raises(DataError, match="too large"):
        parse_idx(raw)


def test_zero_sized_dimension_parses_to_empty_array():
    raw = bytes([0, 0, 0x08, 2]) + (0).to_bytes(4, "big") + (5).to_bytes(4, "big")
    assert parse_idx(raw).shape == (0, 5)


# --- properties on arbitrary input -------------------------------------------------------------

_idx_like = st.builds(
    lambda zero, code, ndim, dims, body: zero + bytes([code, ndim])
    + b"".join(d.to_bytes(4, "big") for d in dims) + body,
    st.sampled_from([b"\0\0", b"\0\x01"]),
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x0A]),
    st.integers(0, 5),
    st.lists(st.integers(0, 2 ** 32 - 1) | st.integers(0, 4), max_size=5),
    st.binary(max_size=200),
)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=64) | _idx_like)
def test_arbitrary_bytes_parse_or_raise_data_error(raw):
    try:
        array = parse_idx(raw)
    except DataError as e:
        assert "\n" not in str(e)
        return
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    assert list(array.shape) == dims
    assert array.nbytes == len(raw) - 4 - 4 * ndim


@FAST
@given(array=arrays(np.uint8, array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5)),
       gz=st.booleans(), data=st.data())
def test_truncated_valid_file_raises_data_error(tmp_path, array, gz, data):
    raw = _idx_bytes(array, tmp_path)
    if gz:
        raw = gzip.compress(raw)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    path = tmp_path / "cut"
    path.write_bytes(raw[:cut])
    with pytest.raises(DataError):
        read_idx(path)
