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


def test_no_two_ids_share_a_name_on_a_case_insensitive_file_system(tmp_path: Path) -> None:
    ids = ["abc", "ABC", "Abc", "B00X1", "b00x1", "sha1-" + "0" * 40, "SHA1-" + "0" * 40, "a/b", "123", "x_y-z"]
    stems = [images.file_stem(i) for i in ids]
    assert len({s.casefold() for s in stems}) == len(ids), stems  # what macOS and Windows compare
    assert images.file_stem("B00X1") == "B00X1" and images.file_stem("123") == "123"  # ASINs and numbers unchanged
    assert images.file_stem("SHA1-" + "0" * 40).startswith("sha1-")
    for item in ("abc", "ABC"):  # stored and found again under its own name
        (tmp_path / f"{images.file_stem(item)}.jpg").write_bytes(item.encode())
    assert images.image_for_id(tmp_path, "abc").read_bytes() == b"abc"


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
    write_jpeg(folder / "a.jpg")  # the image of id "A", and of the relative paths below
    write_jpeg(tmp_path / "outside.jpg")
    (folder / "OUT.jpg").symlink_to(tmp_path / "outside.jpg")
    (folder / "IN.jpg").symlink_to(folder / "a.jpg")
    (folder / "A.jpg").symlink_to(folder / "a.jpg")
    candidates = images.locate(folder, ["A", "OUT", "IN", "NONE"])       # found by id
    candidates += images.locate(folder, ["x", "y", "z"], ["a\x00.jpg", "../outside.jpg", "a.jpg"])
    usable, reasons = images.verify_images(candidates, root=folder)
    resolved = str((folder / "a.jpg").resolve())
    assert usable == [resolved, None, resolved, None, None, None, resolved]
    assert reasons == {images.OK: 3, images.UNSAFE: 3, images.MISSING: 1}
    assert images.verify_images(candidates, verify=False, root=folder)[1] == reasons
