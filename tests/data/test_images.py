"""Image paths never come raw from item ids and never leave their folder; unusable images are
classified by reason, never raised (pixel bombs: tests/data/test_bad_input.py)."""

from __future__ import annotations

from pathlib import Path

from helpers import write_jpeg
from msr.data import images


def test_file_stem_hashes_anything_unsafe() -> None:
    assert images.file_stem("B00123") == "B00123"
    for hostile in ("../../etc/passwd", "a/b", "..", ".hidden", "x" * 200, "a\x00b", "C:\\x"):
        stem = images.file_stem(hostile)
        assert stem.startswith("sha1-") and "/" not in stem and ".." not in stem


def test_no_plain_id_takes_another_ids_hashed_name() -> None:
    unsafe = "a/b"
    hashed = images.file_stem(unsafe)
    assert images.file_stem(hashed) != hashed  # the id "sha1-<hex>" would otherwise be stored over "a/b"'s image
    assert images.file_stem(hashed).startswith("sha1-")


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


def test_verify_confines_every_candidate_to_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "covers"
    write_jpeg(folder / "a.jpg")
    write_jpeg(tmp_path / "outside.jpg")
    (folder / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    (folder / "in.jpg").symlink_to(folder / "a.jpg")
    candidates = images.locate(folder, ["a", "out", "in", "none"])       # found by id
    candidates += images.locate(folder, ["x", "y", "z"], ["a\x00.jpg", "../outside.jpg", "a.jpg"])
    usable, reasons = images.verify_images(candidates, root=folder)
    resolved = str((folder / "a.jpg").resolve())
    assert usable == [resolved, None, resolved, None, None, None, resolved]
    assert reasons == {images.OK: 3, images.UNSAFE: 3, images.MISSING: 1}
    assert images.verify_images(candidates, verify=False, root=folder)[1] == reasons
