"""Short table of a benchmark JSON: case, do_bench median, GB/s and fraction of the floor.

    python benchmarks/summarise.py docs/results/h200-benchmarks-v23.json
"""
import json
import sys

data = json.load(open(sys.argv[1]))
print("| case | benchmark | impl | dtype | dir | median ms (q20-q80) | GB/s | of floor |")
print("|---|---|---|---|---|---|---|---|")
for b in data["benchmarks"]:
    e = b["extra_info"]
    if e.get("median_ms") is None:
        continue
    frac = f"{e['fraction_of_floor']:.0%}" if "fraction_of_floor" in e else "-"
    test = b["name"].split("[")[0].removeprefix("test_")
    print(f"| {e['shape']} | {test} | {e['impl']} | {e['dtype']} | {e['direction']} | {e['median_ms']:.3f} "
          f"({e['q20_ms']:.3f}-{e['q80_ms']:.3f}) | {e['GBps']:.0f} | {frac} |")
