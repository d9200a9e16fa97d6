"""Amazon 2018/2014 and 2023 loaders on hand-written fixture files, and the downloader."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from genrec.data.download import download, source_urls
from genrec.data.loaders import amazon2018, amazon2023
from genrec.data.preprocess import PrepareConfig, preprocess
from genrec.errors import DataError, GenrecError

# ---------------------------------------------------------------- fixtures

BEAUTY_REVIEWS = [
    json.dumps(
        {
            "overall": 5.0,
            "verified": True,
            "reviewerID": "U1",
            "asin": "B002",
            "reviewerName": "Ann",
            "reviewText": "Works well",
            "summary": "Great",
            "unixReviewTime": 1300,
        }
    ),
    json.dumps(
        {"reviewerID": "U2", "asin": "B001", "unixReviewTime": 1100, "overall": 3.0, "reviewText": "ok"}
    ),
    json.dumps(
        {"reviewerID": "U1", "asin": "B001", "unixReviewTime": 1200, "overall": 4.0, "summary": "Fine"}
    ),
    "",
    json.dumps({"reviewerID": "U2", "asin": "B003", "unixReviewTime": 1000, "overall": 1.0}),
    json.dumps(
        {
            "reviewerID": "U1",
            "asin": "B003",
            "unixReviewTime": 1250,
            "overall": 2.0,
            "summary": "Meh",
            "reviewText": "Too small",
        }
    ),
]

# 2014-style metadata: Python literals, nested category lists, a duplicate asin (first wins)
BEAUTY_META = [
    "{'asin': 'B001', 'title': 'Lip <b>Balm</b> &amp; Care', 'description': 'Soft.', 'brand': 'Acme', "
    "'price': 3.5, 'categories': [['Beauty', 'Skin Care', 'Beauty'], ['Gifts']]}",
    "{'asin': 'B002', 'title': \"Nail Polish\", 'categories': [['Beauty', 'Nails']], 'salesRank': {'Beauty': 10}}",
    "{'asin': 'B003', 'title': 'Shampoo', 'description': 'Clean<br/>hair', 'brand': 'Acme'}",
    "{'asin': 'B001', 'title': 'Duplicate'}",
]

# 2018-style metadata: JSON, flat `category`, list descriptions
TOYS_META = [
    json.dumps(
        {
            "asin": "T1",
            "title": "Puzzle &amp; Game",
            "description": ["Fun for all.", "<p>Safe &amp; sound</p>"],
            "brand": "Kid Co",
            "category": ["Toys &amp; Games", "Puzzles", "Toys &amp; Games"],
            "main_cat": "Toys",
        }
    ),
    json.dumps({"asin": "T2", "title": "Ball", "description": [], "category": []}),
]
TOYS_REVIEWS = [
    json.dumps({"reviewerID": "R1", "asin": "T2", "unixReviewTime": 20, "overall": 4.0}),
    json.dumps({"reviewerID": "R1", "asin": "T1", "unixReviewTime": 10, "overall": 5.0}),
]

A23_REVIEWS = [
    json.dumps(
        {
            "rating": 5.0,
            "title": "Love it",
            "text": "Smells nice",
            "images": [],
            "asin": "V1",
            "parent_asin": "P1",
            "user_id": "AU1",
            "timestamp": 1588687728923,
            "helpful_vote": 0,
            "verified_purchase": True,
        }
    ),
    json.dumps(
        {
            "rating": 2.0,
            "title": "",
            "text": "Broke",
            "asin": "V2",
            "parent_asin": "P2",
            "user_id": "AU2",
            "timestamp": 1588000000000,
        }
    ),
    json.dumps(
        {
            "rating": 4.0,
            "title": "Ok",
            "asin": "V3",
            "parent_asin": "P1",
            "user_id": "AU2",
            "timestamp": 1587000000500,
        }
    ),
    json.dumps(
        {"rating": 3.0, "asin": "V4", "parent_asin": "P2", "user_id": "AU1", "timestamp": 1500000000000}
    ),
]
A23_META = [
    json.dumps(
        {
            "main_category": "All Beauty",
            "title": "Rose Soap",
            "average_rating": 4.5,
            "features": ["Handmade", "Vegan"],
            "description": ["Gentle soap."],
            "price": None,
            "store": "SoapCo",
            "categories": [],
            "details": {"Size": "1"},
            "parent_asin": "P1",
        }
    ),
    json.dumps(
        {
            "main_category": "All Beauty",
            "title": "Hair <i>Clip</i>",
            "features": [],
            "description": [],
            "store": None,
            "categories": ["Beauty & Personal Care", "Hair Care", "Hair Care"],
            "parent_asin": "P2",
        }
    ),
]


def write(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path``, gzipped when the name ends in .gz."""
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.fixture
def beauty(tmp_path: Path) -> Path:
    """A 2014/2018 folder: full gzipped reviews, a 5-core file, Python-literal metadata."""
    folder = tmp_path / "beauty"
    write(folder / "Beauty.json.gz", BEAUTY_REVIEWS)
    write(
        folder / "Beauty_5.json",
        [json.dumps({"reviewerID": "X", "asin": "B001", "unixReviewTime": 1, "overall": 5.0})],
    )
    write(folder / "meta_Beauty.json", BEAUTY_META)
    return folder


@pytest.fixture
def toys(tmp_path: Path) -> Path:
    """A 2018 folder with JSON metadata (gzipped) and plain reviews."""
    folder = tmp_path / "toys"
    write(folder / "Toys.json", TOYS_REVIEWS)
    write(folder / "meta_Toys.json.gz", TOYS_META)
    return folder


@pytest.fixture
def a23(tmp_path: Path) -> Path:
    """A 2023 folder: gzipped reviews, plain metadata."""
    folder = tmp_path / "a23"
    write(folder / "All_Beauty.jsonl.gz", A23_REVIEWS)
    write(folder / "meta_All_Beauty.jsonl", A23_META)
    return folder


def records(df) -> list[tuple]:
    return [tuple(r) for r in df.itertuples(index=False)]


# ---------------------------------------------------------------- amazon2018


def test_amazon2018_load_beauty(beauty: Path) -> None:
    raw = amazon2018.load(beauty)
    assert raw.format == "amazon2018"
    assert raw.record_kind == "line"
    assert raw.interactions_path == str(beauty / "Beauty.json.gz")  # full file preferred over _5
    assert raw.items_path == str(beauty / "meta_Beauty.json")
    assert raw.files == [str(beauty / "Beauty.json.gz"), str(beauty / "meta_Beauty.json")]
    inter = raw.interactions[["user_id", "item_id", "timestamp", "rating", "review", "_rec"]]
    assert records(inter) == [
        ("U1", "B002", 1300.0, 5.0, "Great. Works well", 1),
        ("U2", "B001", 1100.0, 3.0, "ok", 2),
        ("U1", "B001", 1200.0, 4.0, "Fine", 3),
        ("U2", "B003", 1000.0, 1.0, "", 5),
        ("U1", "B003", 1250.0, 2.0, "Meh. Too small", 6),
    ]
    assert raw.interactions["timestamp"].dtype == np.float64
    items = raw.items[["item_id", "title", "description", "brand", "categories"]]
    assert records(items) == [
        ("B001", "Lip Balm & Care", "Soft.", "Acme", "Beauty,Skin Care"),
        ("B002", "Nail Polish", "", "", "Beauty,Nails"),
        ("B003", "Shampoo", "Clean hair", "Acme", ""),
    ]


def test_amazon2018_json_meta_with_category_lists(toys: Path) -> None:
    raw = amazon2018.load(toys)
    assert records(raw.items[["item_id", "title", "description", "brand", "categories"]]) == [
        ("T1", "Puzzle & Game", "Fun for all. Safe & sound", "Kid Co", "Toys & Games,Puzzles"),
        ("T2", "Ball", "", "", ""),
    ]
    assert records(raw.interactions[["user_id", "item_id", "timestamp", "_rec"]]) == [
        ("R1", "T2", 20.0, 1),
        ("R1", "T1", 10.0, 2),
    ]


def test_amazon2018_preprocess_chronological(beauty: Path) -> None:
    ds = preprocess(amazon2018.load(beauty), PrepareConfig(kcore=0))
    assert list(ds.items["item_id"]) == ["B001", "B002", "B003"]
    assert list(ds.user_ids) == ["U1", "U2"]
    assert [s.tolist() for s in ds.sequences] == [[0, 2, 1], [2, 0]]
    assert [t.tolist() for t in ds.timestamps] == [[1200.0, 1250.0, 1300.0], [1000.0, 1100.0]]
    assert list(ds.interactions["review"]) == ["Fine", "Meh. Too small", "Great. Works well", "", "ok"]


def test_amazon2018_options_and_file_path(beauty: Path, tmp_path: Path) -> None:
    raw = amazon2018.load(beauty, reviews="Beauty_5.json")
    assert records(raw.interactions[["user_id", "item_id"]]) == [("X", "B001")]
    assert raw.items_path == str(beauty / "meta_Beauty.json")

    raw = amazon2018.load(beauty / "Beauty.json.gz")
    assert len(raw.interactions) == 5 and raw.items is not None

    only = tmp_path / "only"
    write(only / "Beauty.json", BEAUTY_REVIEWS)
    raw = amazon2018.load(only)
    assert raw.items is None and raw.items_path is None
    assert raw.files == [str(only / "Beauty.json")]

    with pytest.raises(DataError, match="no such file"):
        amazon2018.load(beauty, meta="meta_Nope.json")


def test_amazon2018_several_categories_need_a_choice(beauty: Path, toys: Path) -> None:
    write(beauty / "Toys.json", TOYS_REVIEWS)
    (beauty / "meta_Beauty.json").rename(beauty.parent / "elsewhere.json")
    with pytest.raises(DataError, match="reviews"):
        amazon2018.load(beauty)
    raw = amazon2018.load(beauty, reviews="Toys.json")
    assert list(raw.interactions["item_id"]) == ["T2", "T1"]
    # a single metadata file says which category is meant
    write(beauty / "meta_Toys.json.gz", TOYS_META)
    assert amazon2018.load(beauty).interactions_path == str(beauty / "Toys.json")


def test_amazon2018_detect(beauty: Path, toys: Path, a23: Path, tmp_path: Path) -> None:
    assert amazon2018.detect(beauty)
    assert amazon2018.detect(toys)
    assert not amazon2018.detect(a23)

    meta_only = tmp_path / "meta_only"
    write(meta_only / "meta_Beauty.json.gz", BEAUTY_META)
    assert amazon2018.detect(meta_only)

    reviews_only = tmp_path / "reviews_only"
    write(reviews_only / "reviews_Beauty_5.json", BEAUTY_REVIEWS)
    assert amazon2018.detect(reviews_only)

    other = tmp_path / "other"
    write(other / "Beauty.inter.json", BEAUTY_REVIEWS)
    write(other / "Beauty.item.json.gz", BEAUTY_REVIEWS)
    write(other / "dataset.json", [json.dumps({"users": 3})])
    assert not amazon2018.detect(other)
    assert not amazon2018.detect(tmp_path / "empty")


# ---------------------------------------------------------------- amazon2023


def test_amazon2023_load(a23: Path) -> None:
    raw = amazon2023.load(a23)
    assert raw.format == "amazon2023"
    assert raw.files == [str(a23 / "All_Beauty.jsonl.gz"), str(a23 / "meta_All_Beauty.jsonl")]
    assert records(raw.interactions[["user_id", "item_id", "timestamp", "rating", "review", "_rec"]]) == [
        ("AU1", "P1", 1588687728.923, 5.0, "Love it. Smells nice", 1),
        ("AU2", "P2", 1588000000.0, 2.0, "Broke", 2),
        ("AU2", "P1", 1587000000.5, 4.0, "Ok", 3),
        ("AU1", "P2", 1500000000.0, 3.0, "", 4),
    ]
    assert records(raw.items[["item_id", "title", "description", "brand", "categories"]]) == [
        ("P1", "Rose Soap", "Gentle soap. Handmade Vegan", "SoapCo", "All Beauty"),
        ("P2", "Hair Clip", "", "", "Beauty & Personal Care,Hair Care"),
    ]


def test_amazon2023_preprocess_chronological(a23: Path) -> None:
    ds = preprocess(amazon2023.load(a23), PrepareConfig(kcore=0))
    assert list(ds.items["item_id"]) == ["P1", "P2"]
    assert list(ds.user_ids) == ["AU1", "AU2"]
    assert [s.tolist() for s in ds.sequences] == [[1, 0], [0, 1]]
    assert [t.tolist() for t in ds.timestamps] == [
        [1500000000.0, 1588687728.923],
        [1587000000.5, 1588000000.0],
    ]


def test_amazon2023_detect(a23: Path, beauty: Path, tmp_path: Path) -> None:
    assert amazon2023.detect(a23)
    assert not amazon2023.detect(beauty)
    meta_only = tmp_path / "meta23"
    write(meta_only / "meta_All_Beauty.jsonl.gz", A23_META)
    assert amazon2023.detect(meta_only)
    other = tmp_path / "other23"
    write(other / "events.jsonl", [json.dumps({"user": "a", "item": "b"})])
    assert not amazon2023.detect(other)


# ---------------------------------------------------------------- errors


def _replace(lines: list[str], index: int, line: str) -> list[str]:
    out = list(lines)
    out[index] = line
    return out


ERROR_CASES = [
    # (loader, file name, lines, expected line, text the message holds)
    (
        amazon2018,
        "Beauty.json",
        _replace(BEAUTY_REVIEWS, 2, '{"reviewerID": "U1", "asin": "B0'),
        "line 3",
        "one JSON object per line",
    ),
    (
        amazon2018,
        "Beauty.json.gz",
        _replace(BEAUTY_REVIEWS, 1, BEAUTY_REVIEWS[1].replace("1100", '"yesterday"')),
        "line 2",
        "'yesterday' is not a number",
    ),
    (
        amazon2018,
        "Beauty.json",
        _replace(BEAUTY_REVIEWS, 4, json.dumps({"reviewerID": "U2", "unixReviewTime": 5})),
        "line 5",
        "'asin'",
    ),
    (
        amazon2018,
        "Beauty.json",
        _replace(BEAUTY_REVIEWS, 5, json.dumps({"reviewerID": "U2", "asin": "B1"})),
        "line 6",
        "'unixReviewTime'",
    ),
    (amazon2018, "Beauty.json", _replace(BEAUTY_REVIEWS, 1, "[1, 2]"), "line 2", "found a list"),
    (
        amazon2018,
        "meta_Beauty.json",
        _replace(BEAUTY_META, 0, "{'asin': 'B001', 'title': 'Lip"),
        "line 1",
        "one JSON object per line",
    ),
    (amazon2018, "meta_Beauty.json.gz", _replace(BEAUTY_META, 1, "{'title': 'No id'}"), "line 2", "'asin'"),
    (
        amazon2023,
        "All_Beauty.jsonl.gz",
        _replace(A23_REVIEWS, 3, A23_REVIEWS[3][:40]),
        "line 4",
        "one JSON object per line",
    ),
    (
        amazon2023,
        "All_Beauty.jsonl",
        _replace(A23_REVIEWS, 0, A23_REVIEWS[0].replace("1588687728923", '"n/a"')),
        "line 1",
        "'n/a' is not a number",
    ),
    (
        amazon2023,
        "All_Beauty.jsonl",
        _replace(A23_REVIEWS, 1, json.dumps({"user_id": "x", "timestamp": 1})),
        "line 2",
        "'parent_asin'",
    ),
    (
        amazon2023,
        "meta_All_Beauty.jsonl",
        _replace(A23_META, 1, json.dumps({"title": "x"})),
        "line 2",
        "'parent_asin'",
    ),
]


@pytest.mark.parametrize(("loader", "name", "lines", "where", "text"), ERROR_CASES)
def test_errors_name_file_and_line(
    tmp_path: Path, loader, name: str, lines: list[str], where: str, text: str
) -> None:
    folder = tmp_path / "bad"
    if loader is amazon2018:
        write(folder / "Beauty.json", BEAUTY_REVIEWS)
        write(folder / "meta_Beauty.json", BEAUTY_META)
    else:
        write(folder / "All_Beauty.jsonl", A23_REVIEWS)
        write(folder / "meta_All_Beauty.jsonl", A23_META)
    if name.endswith(".gz"):  # the gzipped variant replaces the plain file
        (folder / name.removesuffix(".gz")).unlink()
    bad = write(folder / name, lines)
    reviews = None if name.startswith("meta_") else name
    with pytest.raises(DataError) as info:
        loader.load(folder, reviews=reviews)
    message = str(info.value)
    assert message.startswith(f"{bad}: {where}: ")
    assert text in message
    assert "\n" not in message


# ---------------------------------------------------------------- download


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure loopback requests go straight to the loopback address."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10, closes the connection."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _serve(handler) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def site(tmp_path: Path, no_proxy: None) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server over a folder laid out like the 2018 public repository."""
    root = tmp_path / "site"
    write(root / "categoryFiles" / "Beauty.json.gz", BEAUTY_REVIEWS)
    write(root / "metaFiles2" / "meta_Beauty.json.gz", BEAUTY_META)
    yield from ((root, base) for base in _serve(functools.partial(_QuietHandler, directory=str(root))))


def test_source_urls() -> None:
    assert source_urls("amazon2018", "Beauty", "http://h/x/") == [
        "http://h/x/categoryFiles/Beauty.json.gz",
        "http://h/x/metaFiles2/meta_Beauty.json.gz",
    ]
    assert source_urls("amazon2018", "Beauty", five_core=True) == [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/Beauty_5.json.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/metaFiles2/meta_Beauty.json.gz",
    ]
    assert source_urls("amazon2023", "All_Beauty") == [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/review_categories/All_Beauty.jsonl.gz",
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/meta_categories/meta_All_Beauty.jsonl.gz",
    ]
    with pytest.raises(GenrecError, match="amazon2018, amazon2023"):
        source_urls("amazon2014", "Beauty")
    with pytest.raises(GenrecError, match="category"):
        source_urls("amazon2018", "../etc")


def test_download_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(
        GenrecError, match="unknown download source 'kaggle'; expected one of amazon2018, amazon2023"
    ):
        download("kaggle", "Beauty", tmp_path / "out")


def test_download_unreachable_leaves_nothing(tmp_path: Path, no_proxy: None) -> None:
    out = tmp_path / "out"
    with pytest.raises(GenrecError) as info:
        download("amazon2018", "Beauty", out, base_url="http://127.0.0.1:9", timeout=5)
    message = str(info.value)
    assert message.startswith("could not download http://127.0.0.1:9/categoryFiles/Beauty.json.gz: ")
    assert message.endswith(f"; check the internet connection, or download the files by hand into {out}")
    assert "\n" not in message
    assert list(out.iterdir()) == []


def test_download_success_is_atomic_and_skips_present_files(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    out = tmp_path / "out"
    paths = download("amazon2018", "Beauty", out, base_url=base)
    assert paths == [out / "Beauty.json.gz", out / "meta_Beauty.json.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["Beauty.json.gz", "meta_Beauty.json.gz"]
    assert paths[0].read_bytes() == (root / "categoryFiles" / "Beauty.json.gz").read_bytes()
    assert paths[1].read_bytes() == (root / "metaFiles2" / "meta_Beauty.json.gz").read_bytes()
    raw = amazon2018.load(out)
    assert len(raw.interactions) == 5 and len(raw.items) == 3

    # present files are not fetched again: a dead server does not matter
    assert download("amazon2018", "Beauty", out, base_url="http://127.0.0.1:9") == paths


def test_download_http_error_keeps_only_complete_files(site: tuple[Path, str], tmp_path: Path) -> None:
    root, base = site
    (root / "metaFiles2" / "meta_Beauty.json.gz").unlink()
    out = tmp_path / "out"
    with pytest.raises(
        GenrecError, match=r"could not download .*/metaFiles2/meta_Beauty\.json\.gz: HTTP 404"
    ):
        download("amazon2018", "Beauty", out, base_url=base)
    assert [p.name for p in out.iterdir()] == ["Beauty.json.gz"]


def test_download_truncated_transfer_leaves_nothing(tmp_path: Path, no_proxy: None) -> None:
    out = tmp_path / "out"
    for base in _serve(_TruncatingHandler):
        with pytest.raises(GenrecError, match="closed after 10 of 1000 bytes"):
            download("amazon2023", "All_Beauty", out, base_url=base)
    assert list(out.iterdir()) == []


def test_download_timeout_leaves_nothing(tmp_path: Path, no_proxy: None) -> None:
    out = tmp_path / "out"
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        base = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(GenrecError, match="timed out; check the internet connection"):
            download("amazon2018", "Beauty", out, base_url=base, timeout=0.5)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("loader", "name"), [(amazon2018, "Beauty.json"), (amazon2023, "All_Beauty.jsonl.gz")]
)
def test_broken_first_line_is_reported_not_ignored(tmp_path: Path, loader, name: str) -> None:
    bad = write(tmp_path / "broken" / name, ['{"user_id": "U1", "parent_asin": "P', "{}"])
    with pytest.raises(DataError) as info:
        loader.load(tmp_path / "broken")
    assert str(info.value).startswith(f"{bad}: line 1: expected one JSON object per line")
