"""Peak memory and time of decoding one generated PNG to 32x32, as prepare and the scoring actors do.

    .venv/bin/python benchmarks/decode_peak.py grey16 9400 --max-mib 100000   # the issue's PNG, budget lifted
    .venv/bin/python benchmarks/decode_peak.py grey16 6700                     # at the default budget

A PNG of one value (a few hundred kB at most) is built row by row, then decoded once with
``decode_resized``; the peak is the growth of this process's maximum resident set, so run one image per
process. Modes: grey16 (16-bit grey), rgb, palette-alpha (a palette with a transparent entry).
"""
from __future__ import annotations

import argparse
import resource
import struct
import time
import zlib

from vaal_dist.pool.images import DECODE_BUDGET, DecodeBudget, decode_resized

# PNG colour type, bit depth, bytes per row's pixels and extra chunks before IDAT, per mode
MODES = {"grey16": (0, 16, 2), "rgb": (2, 8, 3), "palette-alpha": (3, 8, 1)}


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def flat_png(mode: str, side: int) -> bytes:
    colour, depth, bytes_per_pixel = MODES[mode]
    deflate, row = zlib.compressobj(9), b"\0" + b"\x12" * (bytes_per_pixel * side)
    pixels = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    palette = chunk(b"PLTE", bytes(range(48))) + chunk(b"tRNS", b"\x80") if mode == "palette-alpha" else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, depth, colour, 0, 0, 0))
            + palette + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("side", type=int)
    p.add_argument("--max-mib", type=float, default=DECODE_BUDGET.max_bytes / 2 ** 20, help="the budget's bytes")
    args = p.parse_args()
    data = flat_png(args.mode, args.side)
    budget = DecodeBudget(max_bytes=int(args.max_mib * 2 ** 20), max_seconds=float("inf"))
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    try:
        decode_resized(data, 32, "RGB", budget=budget)
        outcome = "decoded"
    except ValueError as e:          # RefusedImage
        outcome = f"refused: {e}"
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024     # ru_maxrss: KiB on Linux
    print(f"{args.mode} {args.side}x{args.side} ({len(data) / 1000:.0f} kB): {time.perf_counter() - start:.2f} s, "
          f"peak RSS +{peak_mib:.0f} MiB; {outcome}")


if __name__ == "__main__":
    main()
