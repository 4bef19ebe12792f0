"""Sums Nsight Compute's per-kernel gpu__time_duration (CSV) by kernel name.
dit: the window of one transformer call is found from its attention launches (60 blocks: the kernels from
the first attention launch to the one before the 61st, or to the 60th plus one block's period), so the
set-up and later sizes are left out; vae: every profiled kernel (one decode per run) grouped by the pass.
Usage: summarise.py dit|vae FILE.csv"""
import csv, sys, collections

mode, path = sys.argv[1], sys.argv[2]
rows = []
with open(path, newline="") as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    try:
        ns = float(r["Metric Value"].replace(",", ""))
    except ValueError:
        continue
    rows.append((int(r["ID"]), r["Kernel Name"], r.get("Grid Size", ""), r.get("Block Size", ""), ns))
rows.sort()
print(f"{len(rows)} kernels profiled")
if mode == "dit":
    att = [i for i, r in enumerate(rows) if "flash" in r[1].lower() or "attn" in r[1].lower()]
    print(f"attention launches: {len(att)}")
    if len(att) < 2:
        sys.exit("no attention launches found")
    if len(att) >= 120:  # a warm-up call came first: summarise the second
        att = att[60:]
    period = (att[min(59, len(att) - 1)] - att[0]) // min(59, len(att) - 1)
    lo = att[0] - (att[1] - att[0]) // 2
    hi = att[60] - (att[1] - att[0]) // 2 if len(att) > 60 else att[min(59, len(att) - 1)] + period // 2
    win = rows[max(lo, 0):hi]
    print(f"window: kernels {lo}..{hi} ({len(win)}, period {period} per block)")
    blk = rows[att[1] - period // 2: att[1] - period // 2 + period]
    print("one block in launch order (us, grid, block, name):")
    for r in blk:
        print(f"  {r[4]/1e3:9.1f}  {r[2]:>16} {r[3]:>12}  {r[1][:150]}")
else:  # the second decode: after the first decode's conv_out (conv3x3_direct_k), up to the second's
    outs = [i for i, r in enumerate(rows) if "conv3x3_direct" in r[1] or "conv_out" in r[1]]
    print(f"decodes (conv_out launches): {len(outs)}")
    win = rows[outs[0] + 1: outs[1] + 1] if len(outs) >= 2 else rows
    print("one decode in launch order (us, grid, block, name):")
    for r in win:
        print(f"  {r[4]/1e3:9.1f}  {r[2]:>16} {r[3]:>12}  {r[1][:150]}")
tot = collections.defaultdict(lambda: [0.0, 0])
for r in win:
    t = tot[r[1][:150]]
    t[0] += r[4]
    t[1] += 1
s = sum(v[0] for v in tot.values())
print(f"sum of kernel times: {s/1e6:.3f} ms")
for name, (ns, n) in sorted(tot.items(), key=lambda kv: -kv[1][0]):
    print(f"{ns/1e6:9.3f} ms {100*ns/s:5.1f}% {n:6d}×  {name}")
