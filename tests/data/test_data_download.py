"""Downloads from a local HTTP server (127.0.0.1 only): verified, atomic, mirror fallback."""

import gzip
import hashlib
import struct

import numpy as np
import pytest

from bitnet.data import DownloadError, download_file, load_mnist

NAMES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _fake_files(folder, n=4, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    blobs = {
        NAMES[0]: gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + images.tobytes()),
        NAMES[1]: gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + labels.tobytes()),
    }
    for name, blob in blobs.items():
        (folder / name).write_bytes(blob)
    return images, labels, {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}


def test_download_then_load(tmp_path, serve, capsys):
    images, labels, sums = _fake_files(tmp_path / "server")
    url = serve(tmp_path / "server")
    data = tmp_path / "data"
    x, y = load_mnist("test", data_dir=data, download=True, mirrors=[url], checksums=sums, timeout=5)
    assert f"downloading MNIST into {data / 'mnist'} ...\n" in capsys.readouterr().err  # announced on stderr
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert sorted(p.name for p in (data / "mnist").iterdir()) == sorted(NAMES)
    # Second call reads the local files (server no longer needed).
    x2, _ = load_mnist("test", data_dir=data, checksums=sums)
    np.testing.assert_array_equal(x2, images)


def test_first_mirror_404_falls_back(tmp_path, serve):
    images, _, sums = _fake_files(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    mirrors = [serve(tmp_path / "empty"), serve(tmp_path / "good")]
    x, _ = load_mnist("test", data_dir=tmp_path / "data", download=True, mirrors=mirrors, checksums=sums, timeout=5)
    np.testing.assert_array_equal(x, images)


def test_wrong_file_leaves_nothing(tmp_path, serve):
    _, _, sums = _fake_files(tmp_path / "server", seed=1)
    _fake_files(tmp_path / "evil", seed=2)  # same names, different content
    url = serve(tmp_path / "evil")
    target = tmp_path / "data"
    with pytest.raises(DownloadError) as info:
        load_mnist("test", data_dir=target, download=True, mirrors=[url], checksums=sums, timeout=5)
    msg = str(info.value)
    assert "checksum mismatch" in msg and sums[NAMES[0]] in msg and url in msg
    assert list((target / "mnist").iterdir()) == []


def test_every_mirror_failure_is_listed(tmp_path, serve):
    (tmp_path / "empty").mkdir()
    url = serve(tmp_path / "empty")
    with pytest.raises(DownloadError) as info:
        download_file(NAMES[1], tmp_path / "out", [url, url + "other/"], "0" * 64, timeout=5, progress=False)
    msg = str(info.value)
    assert msg.count("HTTP Error 404") == 2 and url + NAMES[1] in msg and url + "other/" + NAMES[1] in msg
    assert list((tmp_path / "out").iterdir()) == []


def test_no_network_error_explains_data_dir(tmp_path):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here: connection refused, like being offline
    with pytest.raises(DownloadError) as info:
        download_file(NAMES[1], tmp_path, [f"http://127.0.0.1:{port}/"], "0" * 64, timeout=2, progress=False)
    python, cli = str(info.value), info.value.cli_message  # the fix in each caller's terms
    assert "BITNET_DATA" in python and "data_dir=DIR" in python and "internet" in python and "--" not in python
    assert "BITNET_DATA" in cli and "--data-dir DIR" in cli and "internet" in cli and "data_dir=" not in cli


def test_refuses_download_without_checksum(tmp_path):
    with pytest.raises(ValueError, match="no SHA-256"):
        load_mnist("test", data_dir=tmp_path, download=True, mirrors=["http://127.0.0.1:9/"], checksums={})


def test_python_download_of_the_real_files_announces_size_and_folder(tmp_path, serve, data_dir, capsys):
    url = serve(data_dir / "mnist")  # a local mirror of the canonical files
    x, y = load_mnist("test", data_dir=tmp_path, download=True, mirrors=[url], timeout=5)
    assert x.shape == (10000, 28, 28) and len(y) == 10000
    err = capsys.readouterr().err
    assert f"downloading MNIST (1.7 MB) into {tmp_path / 'mnist'} ...\n" in err  # the test split only
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(NAMES)
