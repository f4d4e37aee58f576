#!/usr/bin/env python3
"""Writes the comparison scripts' 2 GiB test image: regions of 64 KiB to 2 MiB, ~74.5% random data
(unique bytes), ~10.4% zeros written as data (allocated: only a content scan finds them), the rest
never written (holes). The layout depends on the seed only.

usage: make-layout.py PATH SEED [ZERO_LIST]
ZERO_LIST, if given, receives a qemu-io command per zero region, to write them again as data.
"""
import os
import random
import sys

path, seed = sys.argv[1], int(sys.argv[2])
zlist = sys.argv[3] if len(sys.argv) > 3 else None
size, unit = 2 << 30, 64 * 1024
rnd = random.Random(seed)
zeros = bytes(2 << 20)
count = {"data": 0, "zero": 0, "hole": 0}
zero_regions = []
with open(path, "wb") as f:
    f.truncate(size)
    pos = 0
    while pos < size:
        n = min(size - pos, unit * rnd.randint(1, 32))
        r = rnd.random()
        kind = "data" if r < 0.745 else "zero" if r < 0.849 else "hole"
        if kind == "data":
            os.pwrite(f.fileno(), os.urandom(n), pos)
        elif kind == "zero":
            os.pwrite(f.fileno(), zeros[:n], pos)
            zero_regions.append((pos, n))
        count[kind] += n
        pos += n
if zlist:
    with open(zlist, "w") as z:
        for off, n in zero_regions:
            z.write(f"write -q -P 0 {off} {n}\n")
print("layout: " + ", ".join(f"{k} {v >> 20} MiB ({100 * v / size:.1f}%)" for k, v in count.items()))
