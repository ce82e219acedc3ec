"""Stage ``find_near_copies``: the groups of near-identical breast images, which no split or
fold of the classifiers may separate.

    python -m stages.find_near_copies --groups GROUPS.csv --audit AUDIT.json
        --thumbnails THUMBNAILS.npz --pictures FOLDER

Ultrasound sets hold near-copies of one scan: re-exports, the same scan with calipers drawn,
neighbouring frames of one sweep, at times one scan under both labels. A classifier scored
on a near-copy of an image it was fitted on is scored on an image it has in effect seen.
This stage reads the images that ``extract_vgg_features.data`` names (through the same
``open_data``, so in the same order) and finds the near-copies by the rule of
``stages.shared.near_copies`` (pixel correlation of small grey thumbnails, at least
``find_near_copies.min_correlation``). A lab's own groups join them: ``lab_groups`` names a
CSV in ``data/local/breast/`` with the columns ``image`` (the path under the image folder, as
the features' ``source`` records it) and ``group`` (a patient or lesion id); ``none`` for
none. It reads no features, so a change of the threshold reruns no extraction. Writes

* ``--groups``: a CSV row per image, in the features' order: ``source``, ``split``,
  ``label``, ``group`` (a number; images in one group stay on one side of every split),
  and ``nearest`` and ``correlation``, the most correlated other image and how much;
* ``--audit``: the rule, the number of groups, the groups that span the data's splits and
  those whose images carry different labels, each listed by image;
* ``--thumbnails``: the thumbnails of the images the classifiers are fitted on (all but the
  test split), with their sources and labels, for ``classify-images`` to tell a new image
  that is a near-copy of one of them;
* ``--pictures``: a PNG of each group whose images carry different labels, for
  ``dvc plots show``: a lab must see those and fix its labels.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from stages.shared.breast_data import LOCAL_DATA_DIR, BreastDataSetting, ImageSet, open_data
from stages.shared.config import Section, StageError, one_line, read_params
from stages.shared.downloads import local_copy, local_or
from stages.shared.files import save_figure, save_npz
from stages.shared.near_copies import THUMBNAIL_SIZE, group_ids, near_copy_pairs, thumbnail, unit_rows
from stages.shared.runner import atomic_path, run_stage, stage_args, write_json

NO_LAB_GROUPS = "none"
LAB_GROUP_COLUMNS = ("image", "group")
PROGRESS_EVERY = 500  # images between progress lines
PICTURE_SIZE = 128  # pixels of each image in a conflicting group's picture


class NearCopySettings(Section):
    min_correlation: float = Field(gt=0, le=1)
    lab_groups: local_or(LOCAL_DATA_DIR, "CSV file", NO_LAB_GROUPS)  # type: ignore[valid-type]


class Params(Section):
    extract_vgg_features: BreastDataSetting
    find_near_copies: NearCopySettings


def read_thumbnails(images: ImageSet) -> np.ndarray:
    """float32 (N, THUMBNAIL_SIZE**2): every image's thumbnail, with a progress line now and then."""
    thumbnails = np.empty((len(images), THUMBNAIL_SIZE * THUMBNAIL_SIZE), np.float32)
    for i in range(len(images)):
        thumbnails[i] = thumbnail(images.read(i))
        if (i + 1) % PROGRESS_EVERY == 0:
            print(f"find_near_copies: read {i + 1}/{len(images)} images", flush=True)
    return thumbnails


def read_lab_groups(path: Path, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ``(first, second)`` of image indices that a lab's groups CSV puts together.

    Every image it names must be among ``sources``; an image named twice must have one group.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable CSV ({one_line(err)})") from None
    missing = [column for column in LAB_GROUP_COLUMNS if column not in table.columns]
    if missing:
        raise StageError(
            f"{path}: no {missing[0]!r} column (expected {', '.join(LAB_GROUP_COLUMNS)}; has {', '.join(table.columns)})"
        )
    blank = table[(table["image"] == "") | (table["group"] == "")]
    if len(blank):
        raise StageError(f"{path}: row {blank.index[0] + 2} has an empty image or group")
    index = {source: i for i, source in enumerate(sources.tolist())}
    unknown = sorted(set(table["image"]) - set(index))
    if unknown:
        raise StageError(f"{path}: names {unknown[0]!r}, which is not an image of the data (as its source records it)")
    twice = table.drop_duplicates().groupby("image")["group"].nunique()
    if (twice > 1).any():
        raise StageError(f"{path}: image {twice.index[twice > 1][0]!r} is in more than one group")
    rows = table["image"].map(index).to_numpy()
    firsts, seconds = [], []
    for members in pd.Series(rows).groupby(table["group"].to_numpy()).agg(list):
        firsts += [members[0]] * (len(members) - 1)  # a chain through the group's first image
        seconds += members[1:]
    return np.array(firsts, np.int64), np.array(seconds, np.int64)


def group_table(images: ImageSet, groups: np.ndarray, nearest_index: np.ndarray, nearest_correlation: np.ndarray):
    """The rows of ``--groups``: one per image, in the images' order."""
    import pandas as pd

    return pd.DataFrame(
        {
            "source": images.source,
            "split": images.split,
            "label": np.asarray(images.class_names, dtype=object)[images.labels],
            "group": groups,
            "nearest": np.where(nearest_index >= 0, images.source[nearest_index], ""),
            "correlation": np.round(nearest_correlation, 4),
        }
    )


def audit(table, min_correlation: float, lab_groups: str) -> dict:
    """What ``--audit`` holds: the rule, counts, and the groups that span splits or labels."""
    sizes = table.groupby("group")["source"].transform("size")
    shared = table[sizes > 1]

    def listed(groups) -> list[dict]:
        rows = shared[shared["group"].isin(groups)]
        return [
            {"group": int(group), "images": members[["source", "split", "label"]].to_dict("records")}
            for group, members in rows.groupby("group")
        ]

    spanning = [g for g, members in shared.groupby("group") if members["split"].nunique() > 1]
    conflicting = [g for g, members in shared.groupby("group") if members["label"].nunique() > 1]
    fitted_groups = set(table.loc[table["split"] != "test", "group"])
    test = table[table["split"] == "test"]
    return {
        "rule": (
            f"pixel correlation of {THUMBNAIL_SIZE}x{THUMBNAIL_SIZE} grey thumbnails at least {min_correlation}, "
            f"groups joined through shared images; lab groups: {lab_groups}"
        ),
        "images": len(table),
        "images_with_a_near_copy": int(len(shared)),
        "groups_of_two_or_more": int(shared["group"].nunique()),
        "largest_group": int(sizes.max()),
        "test_images_with_a_near_copy_outside_the_test_split": int(test["group"].isin(fitted_groups).sum()),
        "groups_spanning_splits": listed(spanning),
        "groups_with_different_labels": listed(conflicting),
    }


def draw_group(images: ImageSet, members, path: Path) -> None:
    """A picture of one group's images side by side, each titled with its source, split and label."""
    from matplotlib.figure import Figure

    from stages.shared.images import prepare_image

    fig = Figure(figsize=(2.2 * len(members), 2.6))
    for column, (index, row) in enumerate(members.iterrows(), start=1):
        ax = fig.add_subplot(1, len(members), column)
        ax.imshow(prepare_image(images.read(index), PICTURE_SIZE, mode="L"), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{row['source']}\n{row['split']}: {row['label']}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"group {row['group']}: one scan under different labels?", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str]) -> None:
    params = read_params(Params)
    settings = params.find_near_copies
    args = stage_args("find_near_copies", argv, "groups", "audit", "thumbnails", "pictures")
    images = open_data(params.extract_vgg_features.data)
    started = time.perf_counter()
    print(f"find_near_copies: {len(images)} images; near-copies at pixel correlation >= {settings.min_correlation}")
    thumbnails = read_thumbnails(images)
    first, second, nearest_index, nearest_correlation = near_copy_pairs(unit_rows(thumbnails), settings.min_correlation)
    if settings.lab_groups != NO_LAB_GROUPS:
        lab_first, lab_second = read_lab_groups(local_copy(LOCAL_DATA_DIR, settings.lab_groups), images.source)
        first, second = np.concatenate([first, lab_first]), np.concatenate([second, lab_second])
    table = group_table(images, group_ids(len(images), first, second), nearest_index, nearest_correlation)
    report = audit(table, settings.min_correlation, settings.lab_groups)

    with atomic_path(args.groups) as tmp:
        table.to_csv(tmp, index=False)
    write_json(args.audit, report)
    fitted = images.split != "test"
    save_npz(
        args.thumbnails,
        thumbnails=thumbnails[fitted],
        source=images.source[fitted],
        labels=images.labels[fitted],
        class_names=np.array(images.class_names),
        min_correlation=np.float64(settings.min_correlation),
    )
    if args.pictures.exists():  # no picture of a group an earlier run found
        shutil.rmtree(args.pictures)
    args.pictures.mkdir(parents=True)
    for entry in report["groups_with_different_labels"]:
        members = table[table["group"] == entry["group"]]
        draw_group(images, members, args.pictures / f"group_{entry['group']}.png")

    print(
        f"find_near_copies: {report['images_with_a_near_copy']} of {len(images)} images have a near-copy, in "
        f"{report['groups_of_two_or_more']} groups (the largest {report['largest_group']}); "
        f"{len(report['groups_spanning_splits'])} span the data's splits, "
        f"{report['test_images_with_a_near_copy_outside_the_test_split']} test images have one outside the test split; "
        f"{len(report['groups_with_different_labels'])} groups carry different labels "
        f"(pictures in {args.pictures}/); {time.perf_counter() - started:.1f}s"
    )


if __name__ == "__main__":
    run_stage(main)
