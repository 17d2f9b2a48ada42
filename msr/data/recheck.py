"""Item images checked again where later stages read them: item summaries, SFT rows and scoring.

`msr data prepare` verifies every image once and keeps only the paths it could use, but a file can
still be corrupted, truncated, replaced (by a folder, a huge or undecodable file) or deleted after
that. A stage that would open it then crashed at that item on every re-run. So each stage that reads
images checks them again with `msr.data.images.check_image`, once per distinct path per stage run,
in a thread pool (decoding releases the GIL). A bad image is counted by reason (`items_image_<reason>`,
the names prepare's statistics use), logged as a warning naming the item, and its item is asked about
without an image, exactly as prepare treats an image it could not use. Nothing is remembered between
runs: once the file is repaired, the next run uses it again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from msr.data.images import MAX_IMAGE_PIXELS, OK, check_image
from msr.data.prepare import STAGE as PREPARE_STAGE
from msr.rundir import RunDir

log = logging.getLogger(__name__)
SHOWN = 20  # bad images named one per warning line; the rest only in the summary line


def pixel_cap(run: RunDir) -> int:
    """The pixel cap the run's `msr data prepare` applied (its `max_image_pixels`), so a later check refuses
    no image that prepare accepted."""
    entry = run.manifest()["stages"].get(PREPARE_STAGE, {})
    return int(entry.get("config", {}).get("max_image_pixels") or MAX_IMAGE_PIXELS)


def recheck_images(images: Mapping[str, str | None], stage: str, max_pixels: int = MAX_IMAGE_PIXELS,
                   workers: int = 8) -> tuple[dict[str, str], Counter]:
    """Check the image of every item in `images` (item -> path, None where prepare kept none) again, under
    the pixel cap prepare used (`pixel_cap`).

    Returns the items whose image is still usable (item -> path, unchanged) and the count of the items
    whose image is not, by `items_image_<reason>`. Each distinct path is checked once; each bad image is
    logged (the first `SHOWN` by item, then one summary line), prefixed with `stage`."""
    paths = sorted({p for p in images.values() if p})
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        checked = pool.map(lambda path: check_image(Path(path), max_pixels=max_pixels), paths)
        verdicts = dict(zip(paths, tqdm(checked, total=len(paths), desc="re-checking images", unit="img",
                                        disable=len(paths) < 1000)))
    usable, bad = {}, Counter()
    for item, path in images.items():
        if not path:
            continue
        reason = verdicts[path]
        if reason == OK:
            usable[item] = path
            continue
        bad[reason] += 1
        if sum(bad.values()) <= SHOWN:
            log.warning("%s: item %s: its image %s can no longer be used (%s; it passed `msr data prepare`): its "
                        "prompt is text-only until the file is repaired", stage, item, path, reason)
    if bad:
        log.warning("%s: %d item image(s) no longer usable (%s): those items are asked about without an image; "
                    "repair the files and re-run to use them again", stage, sum(bad.values()),
                    ", ".join(f"{reason}: {n}" for reason, n in sorted(bad.items())))
    return usable, Counter({f"items_image_{reason}": n for reason, n in bad.items()})
