"""Image values in pair datasets: lazy references, recognised wherever a text could stand.

A pair's ``query``, ``positive`` or any negative may be an image instead of a text. Every image is held as
an :class:`ImageRef`, which keeps only *where* the image is (a file path, the encoded bytes, or an
already decoded ``PIL.Image``) and decodes it only when :meth:`ImageRef.load` is called: building,
validating, fingerprinting and sampling a dataset never holds decoded pixels, so memory stays O(batch)
during training and encoding.

Accepted cell values (see :func:`as_image`):

* an :class:`ImageRef`;
* ``bytes`` / ``bytearray`` (an encoded PNG, JPEG, ...);
* a ``PIL.Image.Image``;
* a Hugging Face ``Image`` feature value: ``{"bytes": ..., "path": ...}`` (either may be ``None``);
* ``{"image": <path | bytes>}`` (how JSON lines mark an image in a column that also holds texts);
* a path string, in a column declared as an image column (or one whose every cell is an image path).

Relative paths are resolved against the folder of the data file (``base_dir``).

Equality and hashing use a content hash (SHA-256 of the encoded bytes; of mode, size and pixels for a
PIL image), computed on first use by reading the file once (O(file size), nothing decoded), so the same
picture stored twice is one corpus entry, and a dataset fingerprint does not change when its folder moves.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardbatch.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRef",
    "as_image",
    "check_image",
    "is_image",
    "is_image_value",
    "looks_like_image_path",
    "value_token",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_PATH_LIKE = re.compile(r"^[^\s\"'<>|]+\.(?:png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)
# Prefix of the token an image contributes to text hashes; a NUL never starts a validated text.
_TOKEN_PREFIX = "\x00image:"


class ImageRef:
    """A lazily decoded image: a file path, encoded bytes or a PIL image.

    Args:
        path: image file (absolute, or resolved by the caller).
        data: encoded image bytes.
        image: a decoded ``PIL.Image.Image`` (kept as given; already in memory).

    Exactly one of the three is given.

    Example:
        >>> from PIL import Image
        >>> buffer = io.BytesIO(); Image.new("RGB", (4, 4), "red").save(buffer, "PNG")
        >>> ref = ImageRef(data=buffer.getvalue())
        >>> ref.load().size, ref == ImageRef(data=buffer.getvalue())
        ((4, 4), True)
    """

    __slots__ = ("_key", "data", "image", "path")

    def __init__(
        self, path: str | os.PathLike[str] | None = None, data: bytes | None = None, image: Any = None
    ) -> None:
        if sum(x is not None for x in (path, data, image)) != 1:
            raise TypeError("ImageRef takes exactly one of path=, data=, image=")
        self.path = None if path is None else Path(path)
        self.data = None if data is None else bytes(data)
        self.image = image
        self._key: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def key(self) -> str:
        """SHA-256 of the content (hex); reads a path's file once."""
        if self._key is None:
            digest = hashlib.sha256()
            if self.image is not None:
                digest.update(f"pil:{self.image.mode}:{self.image.size}".encode())
                digest.update(self.image.tobytes())
            else:
                digest.update(self.read_bytes())
            self._key = digest.hexdigest()
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRef) and (self is other or self.key == other.key)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        if self.path is not None:
            return f"ImageRef(path={str(self.path)!r})"
        if self.data is not None:
            return f"ImageRef(data=<{len(self.data)} bytes>)"
        return f"ImageRef(image=<{self.image.mode} {self.image.size[0]}x{self.image.size[1]}>)"

    def describe(self) -> str:
        """A short label for messages (the file path, or the kind of in-memory image)."""
        if self.path is not None:
            return str(self.path)
        return "in-memory image bytes" if self.data is not None else "in-memory PIL image"

    # ------------------------------------------------------------------ access
    def read_bytes(self) -> bytes:
        """The encoded bytes (reads the file for a path reference)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise TypeError("a PIL image reference has no encoded bytes")
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"image file not found: {self.path}") from None
        except OSError as exc:
            raise DataError(f"cannot read image file {self.path} ({exc.strerror or exc})") from exc

    def load(self, mode: str | None = "RGB") -> Any:
        """Decode fully and return a ``PIL.Image.Image`` (converted to ``mode`` unless None).

        Raises:
            DataError: the file is missing, empty, not an image, or truncated (no location: callers that
                know the row and field add it, see :func:`check_image`).
        """
        from PIL import Image, UnidentifiedImageError

        if self.image is not None:
            image = self.image
        else:
            data = self.read_bytes()
            if not data:
                raise DataError(f"{self.describe()}: image is empty (0 bytes)")
            try:
                image = Image.open(io.BytesIO(data))
                image.load()
            except UnidentifiedImageError:
                raise DataError(
                    f"{self.describe()}: not a readable image (unknown format or damaged header)"
                ) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"{self.describe()}: damaged or truncated image ({exc})") from exc
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        return image

    def verify(self) -> None:
        """Check the file is a complete image without keeping its pixels (decodes once, then drops them).

        Raises:
            DataError: missing, empty, unreadable or truncated (message without row/field).
        """
        if self.image is not None:
            return
        image = self.load(mode=None)
        image.close()


# ---------------------------------------------------------------------------------------------- recognition
def is_image(value: Any) -> bool:
    """True for an :class:`ImageRef` (a value already recognised as an image)."""
    return type(value) is ImageRef


def _is_pil(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("PIL.") and hasattr(value, "tobytes") and hasattr(value, "mode")


def is_image_value(value: Any) -> bool:
    """True when :func:`as_image` would accept ``value`` without a path column (a non-string image)."""
    if isinstance(value, ImageRef | bytes | bytearray) or _is_pil(value):
        return True
    if isinstance(value, Mapping):
        keys = set(value)
        return keys == {"image"} or (bool(keys) and keys <= {"bytes", "path"})
    return False


def looks_like_image_path(value: Any) -> bool:
    """A single token ending in an image extension (``"img/cat.png"``), the test for path columns.

    Example:
        >>> looks_like_image_path("images/cat 1.png"), looks_like_image_path("images/cat1.PNG")
        (False, True)
    """
    return isinstance(value, str) and len(value) < 4096 and _PATH_LIKE.match(value) is not None


def _resolve(path: str | os.PathLike[str], base_dir: Path | None) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = base_dir / resolved
    return resolved


def as_image(
    value: Any, base_dir: str | os.PathLike[str] | None = None, *, path_ok: bool = False
) -> ImageRef:
    """Wrap an image cell value in an :class:`ImageRef` (nothing is read or decoded).

    Args:
        value: see the module docstring.
        base_dir: folder relative paths are resolved against (the data file's folder).
        path_ok: accept a plain string as a path (the caller decided the column holds image paths).

    Raises:
        TypeError: ``value`` is not an image value (callers turn this into a DataError with the row).

    Example:
        >>> as_image({"bytes": None, "path": "cat.png"}, "/data").path.as_posix()
        '/data/cat.png'
    """
    base = None if base_dir is None else Path(base_dir)
    if type(value) is ImageRef:
        return value
    if isinstance(value, bytes | bytearray):
        return ImageRef(data=bytes(value))
    if _is_pil(value):
        return ImageRef(image=value)
    if isinstance(value, str) and path_ok:
        return ImageRef(path=_resolve(value, base))
    if isinstance(value, Mapping):
        if set(value) == {"image"}:
            inner = value["image"]
            if isinstance(inner, str):
                return ImageRef(path=_resolve(inner, base))
            return as_image(inner, base)
        if value and set(value) <= {"bytes", "path"}:
            # Hugging Face Image feature layout: bytes win (the path may point into a vanished archive).
            if value.get("bytes"):
                return ImageRef(data=bytes(value["bytes"]))
            if value.get("path"):
                return ImageRef(path=_resolve(value["path"], base))
            if value.get("bytes") is not None:
                return ImageRef(data=b"")  # an empty image: validation names the row
    raise TypeError(f"not an image value: {type(value).__name__}")


def check_image(ref: ImageRef, where: str, field: str, *, full: bool = True) -> None:
    """Validate one image, raising a DataError that names ``where`` (file + row) and ``field``.

    Args:
        ref: the image.
        where: location prefix, e.g. ``"pairs.jsonl: line 4"``.
        field: the column, e.g. ``"positive"`` or ``"negatives[1]"``.
        full: decode the image once (and drop the pixels) to catch truncation; otherwise only check the
            file exists and is non-empty. Memory O(one image) either way.
    """
    try:
        if ref.path is not None:
            if not ref.path.is_file():
                raise DataError(f"image file not found: {ref.path}")
            if ref.path.stat().st_size == 0:
                raise DataError(f"{ref.path}: image is empty (0 bytes)")
        if full:
            ref.verify()
        elif ref.data is not None and not ref.data:
            raise DataError("image is empty (0 bytes)")
    except DataError as exc:
        raise DataError(f"{where}: field '{field}': {exc}") from None


def value_token(value: Any) -> str:
    """A string standing for a text or image value in hashes and text ids (texts map to themselves).

    Example:
        >>> value_token("a text")
        'a text'
    """
    if type(value) is str:
        return value
    if type(value) is ImageRef:
        return _TOKEN_PREFIX + value.key
    raise TypeError(f"expected a text or an ImageRef, got {type(value).__name__}")
