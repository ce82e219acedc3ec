"""Benchmark extract_vgg_features' input pipeline and its memory as the images grow.

    python bench/bench_extraction_input.py [--images 2000] [--rounds 3] [--memory-images 1000 10000]

(a) The input alone (decode, resize to 224x224, batch; no network) over a folder of
    JPEG and PNG images of 500x400 pixels that the bench writes to a temporary folder:
    the old single-thread read (``prepare_image(read_image_file(path))`` one image after
    another, stacked a batch at a time) against the stage's ``iterate_batches`` with 1
    and with 2 workers. The three take turns within each round, in a rotating order, and
    each is reported against the old read of the same round, because this machine's
    speed drifts from minute to minute.
(b) The peak resident memory (RSS, the kernel's high-water mark) of a whole stage run,
    ``python -m stages.extract_vgg_features`` as dvc.yaml gives it (``weights: none``,
    VGG16 ``avg`` at 32x32, defaults otherwise), over folders of 40x40 PNG images, each
    size in a child process of its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))  # run from anywhere, no install

from stages import extract_vgg_features as stage
from stages.commands.model_files import stage_command
from stages.shared import breast_data
from stages.shared import images as shared_images

IMAGE_SIZE = 224  # the stage's default input size
BATCH_SIZE = 32  # the stage's default batch
PHOTO_SHAPE = (400, 500)  # rows, columns: 500x400 pixels


def write_images(root: Path, count: int, shape: tuple[int, int], seed: int = 0) -> None:
    """``count`` images in two class folders: alternately JPEG and PNG, grey and colour,
    a smooth gradient under speckle (something like an ultrasound scan; pure noise
    would make PNG files unrealistically large and slow)."""
    rows, cols = shape
    gradient = np.add.outer(np.linspace(0, 120, rows), np.linspace(0, 80, cols))

    def write(i: int) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed + i)
        grey = np.clip(gradient + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
        pixels = grey if i % 4 < 2 else np.stack([grey, np.roll(grey, 7, axis=1), grey[::-1]], axis=-1)
        folder = root / ("a" if i % 2 else "b")
        Image.fromarray(pixels).save(folder / f"{i:05d}{('.jpg', '.png')[(i // 2) % 2]}", quality=90)

    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL encodes outside the GIL
        list(pool.map(write, range(count)))


def old_read(paths: list[Path]) -> int:
    """The stage's input before: one image after another in one thread, a batch stacked at a time."""
    count = 0
    for start in range(0, len(paths), BATCH_SIZE):
        batch = paths[start : start + BATCH_SIZE]
        count += len(
            np.stack([shared_images.prepare_image(shared_images.read_image_file(path), IMAGE_SIZE) for path in batch])
        )
    return count


def new_read(images: breast_data.ImageSet, workers: int) -> int:
    return sum(len(batch) for batch in stage.iterate_batches(images, IMAGE_SIZE, BATCH_SIZE, workers))


def bench_input(n_images: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench_input_") as folder:
        root = Path(folder)
        started = time.perf_counter()
        write_images(root, n_images, PHOTO_SHAPE)
        images = breast_data.load_image_folder(root)  # the stage's listing and header check
        paths = [root / source for source in images.source]
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"(a) input alone: {len(paths)} images of 500x400 (half JPEG, half PNG; {megabytes:.0f} MiB) "
            f"written in {time.perf_counter() - started:.0f}s, resized to {IMAGE_SIZE}x{IMAGE_SIZE}, "
            f"batches of {BATCH_SIZE}",
            flush=True,
        )
        for path in paths:  # into the page cache, so that the first turn does not pay for the disk
            path.read_bytes()
        ways = {
            "old: one thread, in step": lambda: old_read(paths),
            "new: 1 worker": lambda: new_read(images, 1),
            "new: 2 workers": lambda: new_read(images, 2),
        }
        names = list(ways)
        rates: dict[str, list[float]] = {name: [] for name in names}
        busy: dict[str, float] = {}  # CPU seconds per wall second of the last turn: above 1 is parallel
        for number in range(rounds):
            order = names[number % len(names) :] + names[: number % len(names)]
            for name in order:
                started, cpu_started = time.perf_counter(), time.process_time()
                count = ways[name]()
                seconds = time.perf_counter() - started
                rates[name].append(count / seconds)
                busy[name] = (time.process_time() - cpu_started) / seconds
            print(
                f"  round {number + 1} (load average {os.getloadavg()[0]:.1f}): "
                + ", ".join(f"{name} {rates[name][-1]:.1f}/s using {busy[name]:.2f} cores" for name in order),
                flush=True,
            )
        old = names[0]
        for name in names:
            ratios = [new / before for new, before in zip(rates[name], rates[old])]
            print(
                f"  {name:26s} median {statistics.median(rates[name]):6.1f} images/s; ratio to old per round "
                f"{', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f}x)",
                flush=True,
            )


def run_stage_in_child(folder: str, results: multiprocessing.Queue) -> None:
    """In a child process: the whole stage from ``folder``, then its peak RSS."""
    import contextlib
    import resource

    os.chdir(folder)
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the stage's progress lines
        stage.main(stage_command("extract_vgg_features", path=PROJECT / "dvc.yaml"))
    seconds = time.perf_counter() - started
    results.put({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": seconds})


def bench_memory(sizes: list[int]) -> None:
    print(
        f"(b) peak RSS of a whole stage run (VGG16 avg at 32x32, random weights, batch {BATCH_SIZE}, "
        f"workers 2, chunks of {stage.CHUNK_SIZE}), each in a child process:",
        flush=True,
    )
    peaks = {}
    for count in sizes:
        with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
            data = Path(folder) / "data/local/breast/lab"
            write_images(data, count, (40, 40))
            settings = {
                "data": "lab",
                "backbone": "vgg16",
                "weights": "none",
                "layer": "avg",
                "blocks": [5],
                "image_size": 32,
                "batch_size": BATCH_SIZE,
                "workers": 2,
            }
            (Path(folder) / "params.yaml").write_text(json.dumps({"extract_vgg_features": settings}))
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            child = context.Process(target=run_stage_in_child, args=(folder, results))
            child.start()
            result = results.get()  # before join: a child with a full queue pipe would never exit
            child.join()
            peaks[count] = result["peak_rss_mib"]
            all_prepared = count * 32 * 32 * 3 * 4 / 2**20
            print(
                f"  {count:6d} images: peak RSS {result['peak_rss_mib']:.0f} MiB, {result['seconds']:.0f}s "
                f"(every prepared image held at once would be {all_prepared:.0f} MiB; "
                f"the features are {count * 512 * 4 / 2**20:.1f} MiB)",
                flush=True,
            )
    smallest, largest = min(peaks), max(peaks)
    if largest > smallest:
        growth = (peaks[largest] - peaks[smallest]) * 2**20 / (largest - smallest)
        print(
            f"  growth from {smallest} to {largest} images: {peaks[largest] - peaks[smallest]:.0f} MiB, "
            f"{growth / 1024:.1f} KiB per image",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images for the input benchmark (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each way of reading (default 3)")
    parser.add_argument(
        "--memory-images",
        type=int,
        nargs="*",
        default=[1000, 10000],
        help="image counts for the memory runs (default 1000 10000; none to skip)",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores", flush=True)
    bench_input(args.images, args.rounds)
    if args.memory_images:
        bench_memory(args.memory_images)


if __name__ == "__main__":
    main()
