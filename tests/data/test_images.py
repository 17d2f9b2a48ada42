"""Image paths never come raw from item ids; unusable images are classified, never raised."""

from __future__ import annotations

from pathlib import Path

from helpers import write_jpeg
from msr.data import images


def test_file_stem_hashes_anything_unsafe() -> None:
    assert images.file_stem("B00123") == "B00123"
    for hostile in ("../../etc/passwd", "a/b", "..", ".hidden", "x" * 200, "a\x00b", "C:\\x"):
        stem = images.file_stem(hostile)
        assert stem.startswith("sha1-") and "/" not in stem and ".." not in stem


def test_resolve_inside_refuses_traversal(tmp_path: Path) -> None:
    assert images.resolve_inside(tmp_path, "a/b.jpg") == (tmp_path / "a" / "b.jpg").resolve()
    assert images.resolve_inside(tmp_path, "../b.jpg") is None
    assert images.resolve_inside(tmp_path, "/etc/passwd") is None


def test_check_image_reasons(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    full = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    assert images.check_image(tmp_path / "good.jpg") == images.OK
    assert images.check_image(tmp_path / "bad.jpg") == images.UNREADABLE
    assert images.check_image(tmp_path / "cut.jpg") == images.UNREADABLE
    assert images.check_image(tmp_path / "none.jpg") == images.MISSING
    assert images.check_image(None) == images.MISSING
    usable, reasons = images.verify_images([tmp_path / "good.jpg", tmp_path / "bad.jpg", None])
    assert usable[0] == str((tmp_path / "good.jpg").resolve()) and usable[1:] == [None, None]
    assert reasons == {images.OK: 1, images.UNREADABLE: 1, images.MISSING: 1}
    usable, reasons = images.verify_images([tmp_path / "bad.jpg"], verify=False)
    assert reasons == {images.OK: 1}
