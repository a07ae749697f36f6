from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardbatch.data import PairDataset, load_pairs
from hardbatch.data.images import ImageRef, as_image, looks_like_image_path, value_token
from hardbatch.errors import ConfigError, DataError


def _png(path: Path, color: str | tuple[int, ...], size: int = 8) -> Path:
    Image.new("RGB", (size, size), color).save(path)
    return path


def _noise_png(path: Path, size: int = 64, seed: int = 0) -> Path:
    # Incompressible pixels: truncating the file cuts the image data itself, not just its header.
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def image_dir(tmp_path):
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    _png(folder / "img" / "red.png", "red")
    _png(folder / "img" / "blue.png", "blue")
    return folder


# ---------------------------------------------------------------------------------------------- values
def test_relative_paths_resolve_against_the_data_file_not_the_cwd(image_dir, tmp_path, monkeypatch):
    data = _jsonl(
        image_dir / "pairs.jsonl",
        [{"query": "a red square", "positive": "img/red.png"}, {"query": "blue", "positive": "img/blue.png"}],
    )
    monkeypatch.chdir(tmp_path)  # a cwd-relative resolution would look for ./img/red.png here
    ds = load_pairs(data)
    assert ds.positives[0].path == (image_dir / "img" / "red.png").resolve()
    assert ds.positives[0].load().getpixel((0, 0)) == (255, 0, 0)
    assert ds.queries == ["a red square", "blue"]


def test_every_kind_of_image_value_is_recognised(image_dir):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "green").save(buffer, "PNG")
    encoded = buffer.getvalue()
    rows = [
        {"query": "bytes", "positive": encoded},
        {"query": "pil", "positive": Image.new("RGB", (4, 4), "green")},
        {"query": "hf feature", "positive": {"bytes": encoded, "path": None}},
        {"query": "hf path", "positive": {"bytes": None, "path": str(image_dir / "img" / "red.png")}},
        {"query": "marked", "positive": {"image": str(image_dir / "img" / "blue.png")}},
        {"query": "plain text", "positive": "a text positive"},
    ]
    ds = load_pairs(rows)
    kinds = [type(v).__name__ for v in ds.positives]
    assert kinds == ["ImageRef"] * 5 + ["str"]
    colours = [v.load().getpixel((0, 0)) for v in ds.positives[:5]]
    assert colours == [(0, 128, 0), (0, 128, 0), (0, 128, 0), (255, 0, 0), (0, 0, 255)]
    # Same picture as bytes and as an HF feature: one content key (one corpus entry in evaluation).
    assert ds.positives[0] == ds.positives[2] and ds.positives[0] != ds.positives[3]


def test_images_as_queries_and_as_negatives(image_dir):
    rows = [
        {"query": "img/red.png", "positive": "red", "negatives": ["img/blue.png"]},
        {"query": "img/blue.png", "positive": "blue", "negatives": ["img/red.png"]},
    ]
    ds = load_pairs(_jsonl(image_dir / "i2t.jsonl", rows))
    assert all(isinstance(q, ImageRef) for q in ds.queries)
    assert ds.positives == ["red", "blue"]
    assert ds.negatives[0][0].path.name == "blue.png"


def test_path_detection_is_per_column_and_explicit_columns_override(image_dir):
    # A text column with one path-looking cell stays text (auto needs every cell to look like a path).
    rows = [{"query": "q1", "positive": "img/red.png"}, {"query": "q2", "positive": "a sentence"}]
    ds = load_pairs(_jsonl(image_dir / "mixed.jsonl", rows))
    assert ds.positives == ["img/red.png", "a sentence"]
    # Declared as an image column, a missing path is an error naming the row and field.
    with pytest.raises(DataError, match=r"line 2: field 'positive': image file not found"):
        load_pairs(image_dir / "mixed.jsonl", image_columns=["positive"])
    assert looks_like_image_path("img/a.JPG") and not looks_like_image_path("see img/a.png")
    with pytest.raises(ConfigError, match="image_columns"):
        load_pairs(image_dir / "mixed.jsonl", image_columns=["id"])


def test_csv_image_column(image_dir):
    (image_dir / "pairs.csv").write_text("query,positive\nred one,img/red.png\nblue one,img/blue.png\n")
    ds = load_pairs(image_dir / "pairs.csv")
    assert [p.path.name for p in ds.positives] == ["red.png", "blue.png"]


def test_hf_image_feature_is_not_decoded(image_dir):
    datasets = pytest.importorskip("datasets")
    hf = datasets.Dataset.from_dict(
        {
            "query": ["red", "blue"],
            "positive": [str(image_dir / "img" / "red.png"), str(image_dir / "img" / "blue.png")],
        }
    ).cast_column("positive", datasets.Image())
    ds = load_pairs(hf, check_images="none")
    assert all(isinstance(p, ImageRef) and p.image is None for p in ds.positives)
    assert ds.positives[1].load().getpixel((0, 0)) == (0, 0, 255)


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "image is empty"),
        (lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
        (lambda p: p.write_bytes(_noise_png(p).read_bytes()[:3000]), "truncated"),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_bad_images_name_the_line_and_field(image_dir, make, message):
    bad = image_dir / "img" / "bad.png"
    make(bad)
    rows = [
        {"query": "fine", "positive": "ok", "negatives": ["img/red.png"]},
        {"query": "broken", "positive": "ok", "negatives": ["img/blue.png", "img/bad.png"]},
    ]
    data = _jsonl(image_dir / "bad.jsonl", rows)
    with pytest.raises(DataError, match=rf"bad\.jsonl: line 2: field 'negatives\[1\]': .*{message}"):
        load_pairs(data)


def test_check_images_levels(image_dir):
    bad = image_dir / "img" / "trunc.png"
    bad.write_bytes(_noise_png(bad).read_bytes()[:3000])
    data = _jsonl(image_dir / "t.jsonl", [{"query": "q", "positive": "img/trunc.png"}])
    # "exists" only checks the file is there and non-empty: the truncation surfaces when decoded.
    ds = load_pairs(data, check_images="exists")
    with pytest.raises(DataError, match="truncated"):
        ds.positives[0].load()
    with pytest.raises(ConfigError, match="check_images"):
        load_pairs(data, check_images="sometimes")


def test_loading_with_exists_check_decodes_nothing(image_dir, monkeypatch):
    rows = [{"query": f"q{i}", "positive": "img/red.png" if i % 2 else "img/blue.png"} for i in range(20)]
    data = _jsonl(image_dir / "many.jsonl", rows)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    ds = load_pairs(data, check_images="exists")
    _ = ds.fingerprint  # hashing reads bytes, never decodes
    assert opened == []
    ds.positives[3].load()
    assert len(opened) == 1


# ---------------------------------------------------------------------------------------------- identity
def test_fingerprint_follows_content_not_location(image_dir, tmp_path):
    rows = [{"query": "red", "positive": "img/red.png"}, {"query": "blue", "positive": "img/blue.png"}]
    first = load_pairs(_jsonl(image_dir / "p.jsonl", rows))
    moved = tmp_path / "elsewhere"
    (moved / "img").mkdir(parents=True)
    for name in ("red.png", "blue.png"):
        (moved / "img" / name).write_bytes((image_dir / "img" / name).read_bytes())
    second = load_pairs(_jsonl(moved / "p.jsonl", rows))
    assert first.fingerprint == second.fingerprint
    _png(moved / "img" / "blue.png", (0, 0, 254))  # one pixel value changed
    third = load_pairs(_jsonl(moved / "p2.jsonl", rows))
    assert third.fingerprint != first.fingerprint
    # An image never collides with a text that happens to be its path.
    text = PairDataset(["red", "blue"], ["img/red.png", "img/blue.png"])
    assert text.fingerprint != first.fingerprint


def test_jsonl_round_trip_with_images(image_dir, tmp_path):
    # Mixed columns: {"image": path} marks an image among texts.
    rows = [
        {"query": "red", "positive": {"image": "img/red.png"}},
        {"query": {"image": "img/blue.png"}, "positive": "blue"},
    ]
    original = load_pairs(_jsonl(image_dir / "p.jsonl", rows))
    assert original.has_images and isinstance(original.queries[1], ImageRef)
    saved = original.save(tmp_path / "out" / "copy.jsonl")
    again = load_pairs(saved)
    assert again.fingerprint == original.fingerprint
    with pytest.raises(DataError, match=r"\.jsonl or \.json only"):
        original.save(tmp_path / "copy.parquet")
    in_memory = PairDataset(["q"], [as_image(Image.new("RGB", (2, 2)))])
    with pytest.raises(DataError, match="write the images to files first"):
        in_memory.save(tmp_path / "mem.jsonl")


def test_value_token_separates_images_from_texts():
    ref = as_image(b"\x89PNG fake")
    assert value_token("x") == "x"
    assert value_token(ref).startswith("\x00image:") and value_token(ref) != value_token(as_image(b"other"))
    with pytest.raises(TypeError):
        value_token(3)


def test_cli_validate_counts_images(image_dir):
    from typer.testing import CliRunner

    from hardbatch.app.cli.main import app

    rows = [{"query": "red", "positive": "img/red.png"}, {"query": "blue", "positive": "img/blue.png"}]
    data = _jsonl(image_dir / "v.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "validate", str(data)])
    assert result.exit_code == 0, result.output
    assert "images (query / positive / negatives)" in result.output and "0 / 2 / 0" in result.output
    bad = _jsonl(image_dir / "bad.jsonl", [{"query": "q", "positive": "img/missing.png"}])
    result = CliRunner().invoke(app, ["data", "validate", str(bad)])
    assert isinstance(result.exception, DataError)
    assert "line 1: field 'positive': image file not found" in str(result.exception)


def test_to_hf_gives_image_features_and_loads_back(image_dir):
    datasets = pytest.importorskip("datasets")
    rows = [{"query": "red", "positive": "img/red.png"}, {"query": "blue", "positive": "img/blue.png"}]
    original = load_pairs(_jsonl(image_dir / "p.jsonl", rows))
    hf = original.to_hf()
    assert isinstance(hf.features["positive"], datasets.Image)
    assert hf[1]["positive"].getpixel((0, 0)) == (0, 0, 255)  # datasets decodes on access
    assert load_pairs(hf).fingerprint == original.fingerprint
    mixed = PairDataset(["q1", "q2"], [original.positives[0], "text"])
    with pytest.raises(DataError, match="mixes texts and images"):
        mixed.to_hf()
