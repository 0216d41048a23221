#!/usr/bin/env python3
"""Helper of tools/bench/compare.sh: records one measurement per line (JSON lines) and turns
the records into markdown tables (medians over rounds, Target / peer ratios).

  report.py add --results R --group nbd --server S --workload W --round N --kind fio --file F \
            [--cpu-ticks T] [--clk-tck 100] [--load L]
  report.py add ... --kind qemu-img --file F --count C --bs 4096
  report.py add ... --kind iscsi-perf --file F --bs 4096
  report.py skip --results R --group iscsi --server S --reason TEXT
  report.py table --results R --header H.md --servers nbd:target,nbdkit-memory,... \
            --servers iscsi:target,tgtd --workloads nbd:randwrite,... --workloads iscsi:...
"""
import argparse
import json
import os
import re
import statistics
import sys

LABELS = {
    # servers
    "target": "Target",
    "nbdkit-memory": "nbdkit memory",
    "nbdkit-file": "nbdkit file",
    "qemu-nbd": "qemu-nbd O_DIRECT",
    "nbdkit-null": "nbdkit null (client ceiling)",
    "raw-disk": "raw disk (fio libaio O_DIRECT)",
    "raw-disk-sync": "raw disk + fdatasync every 32 MiB",
    "tgtd": "tgtd (file backing)",
    # workloads
    "randwrite": "4 KiB random write QD32, unique data",
    "randread": "4 KiB random read QD32",
    "seqwrite": "1 MiB sequential write QD8",
    "seqwrite-dup": "1 MiB sequential write QD8, duplicate data (one pattern, rewritten each pass)",
    "dedup50": "4 KiB random write QD32, 50% duplicates",
    "mix7030": "4 KiB random 70% read / 30% write QD32",
    "qimg-write": "qemu-img bench 4 KiB write QD32",
    "qimg-read": "qemu-img bench 4 KiB read QD32",
    "iperf-randread": "iscsi-perf 4 KiB random read QD32",
}


def label(name):
    return LABELS.get(name, name)


def load_fio_json(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    # fio's nbd engine prints "fio: connected to NBD server" before the JSON document.
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio output")
    return json.loads(text[start:])


def pct_us(side, p):
    clat = side.get("clat_ns") or {}
    perc = clat.get("percentile") or {}
    v = perc.get(p)
    return None if v is None else v / 1000.0


def parse_fio(path):
    doc = load_fio_json(path)
    job = doc["jobs"][0]
    err = job.get("error", 0) or None
    if isinstance(err, int):
        err = f"errno {err} ({os.strerror(err)})"
    rec = {"error": err}
    iops = bw = nbytes = 0.0
    lat = {}
    for side in ("read", "write"):
        s = job.get(side) or {}
        if s.get("io_bytes", 0) > 0:
            iops += s.get("iops", 0.0)
            bw += s.get("bw_bytes", 0.0)
            nbytes += s.get("io_bytes", 0)
            lat[side] = (pct_us(s, "50.000000"), pct_us(s, "99.000000"))
    rec.update(iops=iops, bw=bw, bytes=nbytes, runtime_ms=max(
        (job.get(s) or {}).get("runtime", 0) for s in ("read", "write")))
    # The client's own CPU (fio's usr + sys share of its run): on a small machine the client and
    # the server share the cores, so what one uses per GB caps what the other can reach.
    if nbytes > 0 and "usr_cpu" in job and job.get("job_runtime"):
        client_s = (job["usr_cpu"] + job.get("sys_cpu", 0.0)) / 100.0 * job["job_runtime"] / 1000.0
        rec["client_cpu_s_per_gb"] = client_s / (nbytes / 1e9)
    if len(lat) == 2:
        rec["p50"] = lat["read"][0]; rec["p99"] = lat["read"][1]
        rec["p50w"] = lat["write"][0]; rec["p99w"] = lat["write"][1]
    elif lat:
        (p50, p99), = lat.values()
        rec["p50"] = p50; rec["p99"] = p99
    if iops == 0 and not rec["error"]:
        rec["error"] = "no I/O done"
    return rec


def parse_qemu_img(path, count, bs):
    text = open(path, encoding="utf-8", errors="replace").read()
    m = re.search(r"Run completed in ([0-9.]+) seconds", text)
    if not m:
        return {"error": (text.strip().splitlines() or ["qemu-img bench failed"])[-1][:200]}
    secs = float(m.group(1))
    return {"iops": count / secs, "bw": count * bs / secs, "bytes": count * bs,
            "runtime_ms": secs * 1000, "error": None}


def parse_iscsi_perf(path, bs, runtime):
    text = open(path, encoding="utf-8", errors="replace").read().replace("\r", "\n")
    ms = re.findall(r"^\s*iops average ([0-9]+)", text, re.M)
    if not ms:
        lines = [l for l in text.splitlines() if l.strip()]
        return {"error": (lines or ["iscsi-perf failed"])[-1][:200]}
    iops = float(ms[-1])
    return {"iops": iops, "bw": iops * bs, "bytes": iops * bs * runtime,
            "runtime_ms": runtime * 1000, "error": None}


def cmd_add(a):
    try:
        if a.kind == "fio":
            rec = parse_fio(a.file)
        elif a.kind == "qemu-img":
            rec = parse_qemu_img(a.file, a.count, a.bs)
        elif a.kind == "iscsi-perf":
            rec = parse_iscsi_perf(a.file, a.bs, a.runtime)
        else:
            raise ValueError("unknown kind " + a.kind)
    except Exception as e:  # a failed run is recorded, never fatal
        rec = {"error": f"{type(e).__name__}: {e}"[:200]}
    rec.update(group=a.group, server=a.server, workload=a.workload, round=a.round, load=a.load)
    if a.cpu_ticks is not None and a.cpu_ticks >= 0 and rec.get("bytes"):
        rec["cpu_s"] = a.cpu_ticks / a.clk_tck
        rec["cpu_s_per_gb"] = rec["cpu_s"] / (rec["bytes"] / 1e9)
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    # One progress line for the terminal.
    if rec.get("error"):
        print(f"  {a.group}/{a.workload:<14} {a.server:<14} round {a.round}: FAILED ({rec['error']})")
    else:
        extra = ""
        if rec.get("p50") is not None:
            extra += f"  p50 {rec['p50']:.0f} us  p99 {rec['p99']:.0f} us"
        if rec.get("cpu_s_per_gb") is not None:
            extra += f"  cpu {rec['cpu_s_per_gb']:.2f} s/GB"
        print(f"  {a.group}/{a.workload:<14} {a.server:<14} round {a.round}: "
              f"{rec['iops']:>9.0f} IOPS {rec['bw'] / 1e6:8.1f} MB/s{extra}  (load {a.load})")


def cmd_skip(a):
    with open(a.results, "a", encoding="utf-8") as f:
        f.write(json.dumps({"group": a.group, "server": a.server, "skip": a.reason}) + "\n")


def fmt_iops(v):
    if v is None:
        return "—"
    if v >= 100000:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def parse_lists(items):
    out = {}
    for item in items or []:
        group, _, names = item.partition(":")
        out[group] = [n for n in names.split(",") if n]
    return out


def cmd_table(a):
    recs = [json.loads(l) for l in open(a.results, encoding="utf-8") if l.strip()]
    for r in recs:
        if isinstance(r.get("error"), int):
            r["error"] = f"errno {r['error']} ({os.strerror(r['error'])})"
    servers = parse_lists(a.servers)
    workloads = parse_lists(a.workloads)
    skipped = {(r["group"], r["server"]): r["skip"] for r in recs if "skip" in r}
    by = {}
    for r in recs:
        if "skip" in r:
            continue
        by.setdefault((r["group"], r["workload"], r["server"]), []).append(r)

    def agg(group, workload, server):
        runs = by.get((group, workload, server), [])
        ok = [r for r in runs if not r.get("error")]
        if not ok:
            errs = sorted({str(r.get("error")) for r in runs})
            return {"n": 0, "runs": len(runs), "errors": errs}
        iops = [r["iops"] for r in ok]
        m = {"n": len(ok), "runs": len(runs),
             "errors": sorted({str(r.get("error")) for r in runs if r.get("error")})}
        for k in ("iops", "bw", "p50", "p99", "p50w", "p99w", "cpu_s_per_gb", "client_cpu_s_per_gb"):
            m[k] = med([r.get(k) for r in ok])
        m["spread"] = (max(iops) - min(iops)) / m["iops"] * 100 if m["iops"] else None
        return m

    out = []
    out.append(open(a.header, encoding="utf-8").read().rstrip())
    loads = [float(r["load"]) for r in recs if r.get("load")]
    if loads:
        out.append(f"- Load average (1 min) when each job started: min {min(loads):.2f}, "
                   f"median {statistics.median(loads):.2f}, max {max(loads):.2f} "
                   f"({len(loads)} jobs).")
    out.append("")
    notes = []
    for group, title in (("nbd", "NBD (fio --ioengine=nbd) and the raw back-end disk"),
                         ("iscsi", "iSCSI (qemu-img bench, iscsi-perf)")):
        if group not in servers or group not in workloads:
            continue
        srv = servers[group]
        wls = workloads[group]
        present = [s for s in srv if (group, s) not in skipped]
        out.append(f"\n## {title}\n")
        for s in srv:
            if (group, s) in skipped:
                out.append(f"- {label(s)}: {skipped[(group, s)]}")
        if any((group, s) in skipped for s in srv):
            out.append("")
        if not present:
            continue
        peers = [s for s in present if s != "target"]
        has_target = "target" in present
        # Summary: IOPS medians and Target / peer ratios.
        out.append("Median IOPS" + (" (Target ÷ peer in brackets; above 1 means Target is faster)"
                                    if has_target else "") + ":\n")
        out.append("| workload | " + " | ".join(label(s) for s in present) + " |")
        out.append("|---|" + "---:|" * len(present))
        for w in wls:
            cells = []
            t = agg(group, w, "target") if has_target else None
            for s in present:
                m = agg(group, w, s)
                if not m["n"]:
                    cells.append("failed" if m["runs"] else "—")
                    continue
                c = fmt_iops(m["iops"])
                if m["n"] < m["runs"]:
                    c += f" [{m['n']}/{m['runs']} ok]"
                if s != "target" and t and t["n"] and m["iops"]:
                    c += f" ({t['iops'] / m['iops']:.2f}x)"
                cells.append(c)
            out.append(f"| {label(w)} | " + " | ".join(cells) + " |")
        # Details.
        out.append("\nDetails (medians over the rounds that succeeded; latency is fio's completion "
                   "latency, read/write for the mix; spread = (max-min)/median of IOPS):\n")
        out.append("| workload | server | IOPS | MB/s | p50 us | p99 us | server CPU s/GB | "
                   "client CPU s/GB | spread | rounds ok | Target ÷ server |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for w in wls:
            t = agg(group, w, "target") if has_target else None
            for s in present:
                m = agg(group, w, s)
                if not m["runs"]:
                    continue
                if m["errors"]:
                    notes.append(f"{label(w)} / {label(s)}: {m['runs'] - m['n']} failed run(s): "
                                 + "; ".join(m["errors"]))
                if not m["n"]:
                    out.append(f"| {label(w)} | {label(s)} | failed | | | | | | | 0/{m['runs']} | |")
                    continue
                p50 = fmt(m["p50"], ".0f")
                p99 = fmt(m["p99"], ".0f")
                if m.get("p50w") is not None:
                    p50 += "/" + fmt(m["p50w"], ".0f")
                    p99 += "/" + fmt(m["p99w"], ".0f")
                ratio = "—"
                if t and t["n"] and m["iops"]:
                    ratio = f"{t['iops'] / m['iops']:.2f}x"
                out.append(f"| {label(w)} | {label(s)} | {fmt_iops(m['iops'])} | "
                           f"{m['bw'] / 1e6:.0f} | {p50} | {p99} | {fmt(m['cpu_s_per_gb'], '.2f')} | "
                           f"{fmt(m.get('client_cpu_s_per_gb'), '.2f')} | "
                           f"{fmt(m['spread'], '.0f')}% | {m['n']}/{m['runs']} | {ratio} |")
    if notes:
        out.append("\nFailures:\n")
        out.extend("- " + n for n in notes)
    print("\n".join(out))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    ad = sub.add_parser("add")
    ad.add_argument("--results", required=True)
    ad.add_argument("--group", required=True)
    ad.add_argument("--server", required=True)
    ad.add_argument("--workload", required=True)
    ad.add_argument("--round", type=int, required=True)
    ad.add_argument("--kind", required=True)
    ad.add_argument("--file", required=True)
    ad.add_argument("--count", type=int, default=0)
    ad.add_argument("--bs", type=int, default=4096)
    ad.add_argument("--runtime", type=float, default=0)
    ad.add_argument("--cpu-ticks", type=int)
    ad.add_argument("--clk-tck", type=int, default=100)
    ad.add_argument("--load", default="")
    sk = sub.add_parser("skip")
    sk.add_argument("--results", required=True)
    sk.add_argument("--group", required=True)
    sk.add_argument("--server", required=True)
    sk.add_argument("--reason", required=True)
    tb = sub.add_parser("table")
    tb.add_argument("--results", required=True)
    tb.add_argument("--header", required=True)
    tb.add_argument("--servers", action="append")
    tb.add_argument("--workloads", action="append")
    a = p.parse_args()
    {"add": cmd_add, "skip": cmd_skip, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
