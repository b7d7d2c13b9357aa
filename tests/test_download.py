"""Downloaded MovieLens archives (ml-1m, ml-20m): fetch, verify, extract safely, parse.

Everything is served from a local HTTP server on 127.0.0.1 and written under tmp_path.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from twotower.data.download import COMPLETE_MARKER, fetch_archive, safe_extract
from twotower.data.movielens import load_ml1m, load_ml20m
from twotower.errors import DataError

ML1M_FILES = {
    "ml-1m/ratings.dat": (
        "1::1193::5::978300760\n"
        "1::661::3::978302109\n"
        "2::1193::4::978298413\n"
        "3::3408::2::978297039\n"
    ).encode("latin-1"),
    "ml-1m/users.dat": (
        "1::F::1::10::48067\n"
        "2::M::56::16::70072\n"
        "3::M::25::15::55117-1234\n"
    ).encode("latin-1"),
    "ml-1m/movies.dat": (
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "3408::Misérables, Les (1998)::Drama\n"
        "3999::No Year Here::Comedy\n"
    ).encode("latin-1"),
    "ml-1m/README": b"fixture\n",
}

ML20M_FILES = {
    "ml-20m/ratings.csv": (
        "userId,movieId,rating,timestamp\n"
        "1,2,3.5,1112486027\n"
        "1,29,4.0,1112484676\n"
        "7,131262,0.5,1427780000\n"
    ).encode(),
    "ml-20m/movies.csv": (
        "movieId,title,genres\n"
        "2,Jumanji (1995),Adventure|Children|Fantasy\n"
        '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Adventure|Drama|Fantasy|Mystery|Sci-Fi\n'
        "131262,Innocence (2014),(no genres listed)\n"
    ).encode("utf-8"),
}


def _make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _digest(path: Path, algo: str) -> str:
    return hashlib.new(algo, path.read_bytes()).hexdigest()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


class LocalServer:
    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.requests = 0
        original = self.httpd.finish_request

        def counting(request, client_address):
            self.requests += 1
            original(request, client_address)

        self.httpd.finish_request = counting
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over tmp_path/served holding an ml-1m and an ml-20m fixture archive."""
    root = tmp_path / "served"
    root.mkdir()
    _make_zip(root / "ml-1m.zip", ML1M_FILES)
    _make_zip(root / "ml-20m.zip", ML20M_FILES)
    server = LocalServer(root)
    yield server, root
    server.stop()


def test_load_ml1m_downloads_verifies_extracts_and_parses(served, tmp_path):
    server, root = served
    data_dir = tmp_path / "data"
    archive = root / "ml-1m.zip"
    data = load_ml1m(
        str(data_dir), url=server.url("ml-1m.zip"), sha256=_digest(archive, "sha256"), md5=_digest(archive, "md5")
    )
    assert server.requests == 1
    assert (data_dir / "ml-1m.zip").read_bytes() == archive.read_bytes()
    assert not list(data_dir.glob("*.part"))
    assert (data_dir / "ml-1m" / COMPLETE_MARKER).is_file()

    inter = data.interactions
    assert data.name == "ml-1m"
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    assert len(inter) == 4
    row = inter[(inter.user_id == 3) & (inter.item_id == 3408)].iloc[0]
    assert row.rating == 2.0 and row.timestamp == 978297039

    users = data.users
    assert users.index.name == "user_id" and list(users.index) == [1, 2, 3]
    assert users.loc[1, "gender"] == "F" and users.loc[2, "gender"] == "M"
    assert users.loc[2, "age"] == 56.0 and users["age"].dtype == np.float64
    assert users.loc[2, "occupation"] == "16" and isinstance(users.loc[2, "occupation"], str)
    assert users.loc[3, "zip_prefix"] == "55" and users.loc[1, "zip_prefix"] == "48"

    items = data.items
    assert items.index.name == "item_id"
    assert items.loc[661, "genres"] == "Animation|Children's|Musical"
    assert items.loc[661, "release_year"] == 1996.0
    assert items.loc[3408, "title"] == "Misérables, Les (1998)"  # latin-1 decoded
    assert items.loc[3408, "release_year"] == 1998.0
    assert math.isnan(items.loc[3999, "release_year"])


def test_second_load_uses_cache_without_network(served, tmp_path):
    server, root = served
    data_dir = tmp_path / "data"
    kwargs = dict(url=server.url("ml-1m.zip"), sha256=_digest(root / "ml-1m.zip", "sha256"), md5=None)
    first = load_ml1m(str(data_dir), **kwargs)
    server.stop()
    with pytest.raises(DataError):  # the server is really gone: a fresh data dir cannot be filled
        load_ml1m(str(tmp_path / "elsewhere"), **kwargs)
    second = load_ml1m(str(data_dir), **kwargs)
    assert server.requests == 1
    assert second.interactions.equals(first.interactions)
    assert second.items.equals(first.items)


def test_network_error_names_url_and_data_dir(tmp_path):
    server = LocalServer(tmp_path)
    url = server.url("ml-1m.zip")
    server.stop()
    data_dir = tmp_path / "offline"
    with pytest.raises(DataError) as excinfo:
        fetch_archive(url, data_dir, md5="0" * 32, show_progress=False)
    message = str(excinfo.value)
    assert url in message and str(data_dir / "ml-1m.zip") in message
    assert _tree(data_dir) == []


def test_wrong_checksum_raises_and_leaves_nothing(served, tmp_path):
    server, root = served
    data_dir = tmp_path / "data"
    wrong = "0" * 64
    with pytest.raises(DataError) as excinfo:
        load_ml1m(str(data_dir), url=server.url("ml-1m.zip"), sha256=wrong, md5=None)
    message = str(excinfo.value)
    assert server.url("ml-1m.zip") in message
    assert wrong in message and _digest(root / "ml-1m.zip", "sha256") in message
    assert _tree(data_dir) == []

    with pytest.raises(DataError, match=_digest(root / "ml-1m.zip", "md5")):
        fetch_archive(server.url("ml-1m.zip"), data_dir, md5="f" * 32, show_progress=False)
    assert _tree(data_dir) == []


def test_fetch_needs_a_checksum_and_replaces_a_corrupt_cached_file(served, tmp_path):
    server, root = served
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match="sha256 or md5"):
        fetch_archive(server.url("ml-1m.zip"), data_dir, show_progress=False)
    data_dir.mkdir()
    (data_dir / "ml-1m.zip").write_bytes(b"truncated")
    path = fetch_archive(server.url("ml-1m.zip"), data_dir, md5=_digest(root / "ml-1m.zip", "md5"), show_progress=False)
    assert path == data_dir / "ml-1m.zip" and path.read_bytes() == (root / "ml-1m.zip").read_bytes()
    assert server.requests == 1


@pytest.mark.parametrize(
    "evil_name", ["../evil", "ml-1m/../../evil", "{tmp}/absolute-evil", "C:/evil", "..\\evil"]
)
def test_safe_extract_refuses_escaping_members(tmp_path, evil_name):
    evil_name = evil_name.format(tmp=tmp_path.as_posix())  # an absolute path, still inside tmp_path
    archive = tmp_path / "crafted" / "bad.zip"
    archive.parent.mkdir()
    _make_zip(archive, {"ml-1m/ok.txt": b"fine", evil_name: b"pwned"})
    assert evil_name in zipfile.ZipFile(archive).namelist()  # the crafted name survived zipfile
    work = tmp_path / "work"
    target = work / "ml-1m"
    before = _tree(tmp_path)
    with pytest.raises(DataError, match="refusing"):
        safe_extract(archive, target)
    assert not target.exists()
    assert _tree(tmp_path) == before  # nothing inside or outside the target
    assert not (tmp_path / "absolute-evil").exists() and not (tmp_path / "evil").exists()


def test_safe_extract_refuses_symlinks(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/ok.txt", b"fine")
        link = zipfile.ZipInfo("ml-1m/passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert _tree(tmp_path) == ["link.zip"]


def test_safe_extract_is_atomic_and_cached(tmp_path):
    archive = _make_zip(tmp_path / "ml-1m.zip", ML1M_FILES)
    target = tmp_path / "ml-1m"
    # a half-extracted folder from a killed run (no marker) is replaced
    target.mkdir()
    (target / "stale.txt").write_text("left over")
    assert safe_extract(archive, target) == target
    assert not (target / "stale.txt").exists()
    assert (target / "ml-1m" / "ratings.dat").read_bytes() == ML1M_FILES["ml-1m/ratings.dat"]
    assert (target / COMPLETE_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m", "ml-1m.zip"]  # no temp sibling left
    # complete: a second call extracts nothing
    (target / "ml-1m" / "ratings.dat").write_text("edited")
    safe_extract(archive, target)
    assert (target / "ml-1m" / "ratings.dat").read_text() == "edited"


def test_load_ml20m_parses_csv_layout(served, tmp_path):
    server, root = served
    data = load_ml20m(str(tmp_path / "data"), url=server.url("ml-20m.zip"), md5=_digest(root / "ml-20m.zip", "md5"))
    assert data.name == "ml-20m" and data.users is None
    inter = data.interactions
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert inter["timestamp"].dtype == np.int64 and inter["rating"].dtype == np.float64
    row = inter[(inter.user_id == 7) & (inter.item_id == 131262)].iloc[0]
    assert row.rating == 0.5 and row.timestamp == 1427780000
    items = data.items
    assert items.index.name == "item_id" and list(items.index) == [2, 29, 131262]
    assert items.loc[2, "genres"] == "Adventure|Children|Fantasy"
    assert items.loc[131262, "genres"] == ""
    assert items.loc[29, "title"] == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert items.loc[29, "release_year"] == 1995.0 and items.loc[131262, "release_year"] == 2014.0
