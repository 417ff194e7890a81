#!/usr/bin/env python3
"""Summarise a bench/vs-llama-cpp.sh run: results.json, results.md and the table on stdout.

    python3 bench/report.py OUT_DIR

Standard library only. Reads what the shell script left in OUT_DIR:
  runs.tsv     one line per engine call: model, threads, kind (pp|tg), n, engine, rep, file
               (file: the JSON that `llama2 bench -o json` or `llama-bench -o json` printed)
  membw.tsv    optional: threads, GB/s (bench/membw.c, best of its passes)
  meta.tsv     key, value lines the script recorded (settings, versions, load average)

Per (model, threads, test, engine) the per-repetition tokens/s of every call are pooled:
`tokens_per_s` from ours, `samples_ts` from llama-bench. Reported: the median, and
"± spread" = half the min..max range of those samples. Ratios are median / median.

The bandwidth bound of decode: bytes read per generated token / measured bandwidth.
Bytes per token = every weight tensor in the GGUF, except that of the token embedding
only one row is read (unless there is no output.weight: then the embedding is also the
output matrix and is read whole). KV cache and activations are left out (small for the
short generations timed here), so the bound is a slight over-estimate of what is possible.
"""
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time

ENGINES = ["llama2", "clang", "plain"]
ENGINE_TITLES = {"llama2": "llama2", "clang": "llama.cpp clang", "plain": "llama.cpp plain"}
CPU_FLAGS = [
    "fma", "f16c", "avx2", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
]

# ggml type id -> (block size in elements, bytes per block)
GGML_TYPES = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
    8: (32, 34), 9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144),
    13: (256, 176), 14: (256, 210), 15: (256, 292), 30: (1, 2),
}


def gguf_tensors(path):
    """[(name, dims, type)] of a GGUF file, from its header alone."""
    with open(path, "rb") as f:
        def rd(fmt):
            size = struct.calcsize("<" + fmt)
            return struct.unpack("<" + fmt, f.read(size))

        def rd_str():
            (n,) = rd("Q")
            return f.read(n).decode("utf-8", "replace")

        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
                  10: "Q", 11: "q", 12: "d"}

        def skip_value(t):
            if t in scalar:
                f.seek(struct.calcsize(scalar[t]), 1)
            elif t == 8:
                (n,) = rd("Q")
                f.seek(n, 1)
            elif t == 9:
                et, n = rd("IQ")
                if et in scalar:
                    f.seek(n * struct.calcsize(scalar[et]), 1)
                else:
                    for _ in range(n):
                        skip_value(et)
            else:
                raise ValueError(f"unknown GGUF value type {t}")

        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        (version,) = rd("I")
        if version < 2:
            raise ValueError(f"GGUF version {version} not supported")
        n_tensors, n_kv = rd("QQ")
        for _ in range(n_kv):
            rd_str()
            (t,) = rd("I")
            skip_value(t)
        out = []
        for _ in range(n_tensors):
            name = rd_str()
            (nd,) = rd("I")
            dims = rd("Q" * nd)
            (ty,) = rd("I")
            rd("Q")  # offset
            out.append((name, dims, ty))
        return out


def decode_bytes(path):
    """(bytes read per decode step, how it was counted)."""
    try:
        tensors = gguf_tensors(path)
        total, embd, embd_row, has_output = 0, 0, 0, False
        for name, dims, ty in tensors:
            blk, bb = GGML_TYPES[ty]
            n = 1
            for d in dims:
                n *= d
            size = n // blk * bb
            total += size
            if name == "token_embd.weight":
                embd, embd_row = size, dims[0] // blk * bb
            if name == "output.weight":
                has_output = True
        if has_output:
            return total - embd + embd_row, "weight tensors, one token_embd row"
        return total, "weight tensors (tied embedding read whole as output)"
    except (KeyError, ValueError, struct.error, OSError) as e:
        return os.path.getsize(path), f"file size (header not read: {e})"


def cpu_info():
    model, flags = "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    have = set(line.split(":", 1)[1].split())
                    flags = [fl for fl in CPU_FLAGS if fl in have]
    except OSError:
        pass
    return {"model": model, "flags": flags, "logical_cpus": os.cpu_count()}


def git_info(root):
    def git(*args):
        try:
            return subprocess.run(["git", "-C", root, *args], capture_output=True,
                                  text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def samples_of(engine, path, threads, kind, n):
    with open(path) as f:
        rows = json.load(f)
    for r in rows:
        if engine == "llama2":
            if r["threads"] == threads and r["test"] == f"{kind}{n}":
                return [float(x) for x in r["tokens_per_s"]], None
        else:
            want = (n, 0) if kind == "pp" else (0, n)
            if r["n_threads"] == threads and (r["n_prompt"], r["n_gen"]) == want:
                return [float(x) for x in r["samples_ts"]], r.get("build_commit")
    raise ValueError(f"{path}: no {kind}{n} result for {threads} threads")


def summary(samples):
    med = statistics.median(samples)
    lo, hi = min(samples), max(samples)
    return {"samples": samples, "median": med, "spread": (hi - lo) / 2, "min": lo, "max": hi}


def fmt(s):
    if s is None:
        return "–"
    return f"{s['median']:.2f} ± {s['spread']:.2f}"


def main():
    out = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    meta = {}
    if os.path.exists(os.path.join(out, "meta.tsv")):
        with open(os.path.join(out, "meta.tsv")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("\t")
                meta[k] = v
    pooled, order, peer_version = {}, [], None
    with open(os.path.join(out, "runs.tsv")) as f:
        for line in f:
            model, threads, kind, n, engine, _rep, path = line.rstrip("\n").split("\t")
            threads, n = int(threads), int(n)
            s, ver = samples_of(engine, path, threads, kind, n)
            peer_version = peer_version or ver
            key = (model, threads, kind, n)
            if key not in pooled:
                pooled[key] = {}
                order.append(key)
            pooled[key].setdefault(engine, []).extend(s)
    membw = {}
    if os.path.exists(os.path.join(out, "membw.tsv")):
        with open(os.path.join(out, "membw.tsv")) as f:
            for line in f:
                t, gbs = line.split()
                membw[int(t)] = float(gbs)

    rows = []
    for model, threads, kind, n in order:
        eng = {e: summary(v) for e, v in pooled[(model, threads, kind, n)].items()}
        row = {
            "model": os.path.basename(model), "model_path": model,
            "model_bytes": os.path.getsize(model), "threads": threads,
            "test": f"{kind}{n}", "kind": kind, "n_tokens": n, "engines": eng,
        }
        for peer in ("clang", "plain"):
            if "llama2" in eng and peer in eng:
                row[f"ratio_{peer}"] = eng["llama2"]["median"] / eng[peer]["median"]
        rows.append(row)

    bounds = []
    per_token = {}
    for row in rows:
        if row["kind"] != "tg" or row["threads"] not in membw:
            continue
        m = row["model_path"]
        if m not in per_token:
            per_token[m] = decode_bytes(m)
        nbytes, how = per_token[m]
        gbs = membw[row["threads"]]
        bound = gbs * 1e9 / nbytes
        b = {"model": row["model"], "threads": row["threads"], "test": row["test"],
             "bytes_per_token": nbytes, "bytes_counted": how, "bandwidth_gbs": gbs,
             "bound_tps": bound}
        for e, s in row["engines"].items():
            b[f"{e}_pct_of_bound"] = 100 * s["median"] / bound
        bounds.append(b)

    cpu = cpu_info()
    git = git_info(root)
    result = {
        "date": meta.get("date") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git, "cpu": cpu, "llama_cpp": peer_version,
        "settings": meta, "membw_gbs": membw, "rows": rows, "bandwidth_bound": bounds,
        "spread": "half of the min..max range of the per-repetition tokens/s",
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)

    present = [e for e in ENGINES if any(e in r["engines"] for r in rows)]
    lines = []
    commit = (git["commit"] or "unknown")[:12] + (" (dirty tree)" if git["dirty"] else "")
    lines.append(f"- CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; "
                 f"flags: {' '.join(cpu['flags']) or 'none of interest'}")
    lines.append(f"- date: {result['date']}; llama2 commit {commit}; "
                 f"llama.cpp {peer_version or 'not run'}")
    lines.append(f"- repetitions per test: {meta.get('repetitions', '?')}, "
                 f"interleaved by {meta.get('interleave', '?')}; load average before: "
                 f"{meta.get('load_before', '?')}; t/s = median ± half the min..max range")
    lines.append("")
    head = ["model", "threads", "test", "llama2 t/s"]
    for peer in ("clang", "plain"):
        if peer in present:
            head += [f"{ENGINE_TITLES[peer]} t/s", f"llama2/{peer}"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("| --- | ---: | --- | " + " | ".join("---:" for _ in head[3:]) + " |")
    for r in rows:
        e = r["engines"]
        cells = [r["model"], str(r["threads"]), r["test"], fmt(e.get("llama2"))]
        for peer in ("clang", "plain"):
            if peer in present:
                ratio = r.get(f"ratio_{peer}")
                cells += [fmt(e.get(peer)), f"{ratio:.2f}" if ratio else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if bounds:
        lines.append("")
        lines.append("Decode vs the memory-bandwidth bound (bound = read bandwidth / bytes "
                     "read per token; bandwidth from bench/membw.c, best pass):")
        lines.append("")
        hb = ["model", "threads", "test", "MB/token", "GB/s", "bound t/s"]
        hb += [f"{ENGINE_TITLES[e]} % of bound" for e in present]
        lines.append("| " + " | ".join(hb) + " |")
        lines.append("| --- | ---: | --- | " + " | ".join("---:" for _ in hb[3:]) + " |")
        for b in bounds:
            cells = [b["model"], str(b["threads"]), b["test"],
                     f"{b['bytes_per_token'] / 1e6:.1f}", f"{b['bandwidth_gbs']:.1f}",
                     f"{b['bound_tps']:.2f}"]
            cells += [f"{b[e + '_pct_of_bound']:.0f}%" if e + "_pct_of_bound" in b else "–"
                      for e in present]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for b in bounds:
            pct = ", ".join(f"{b[e + '_pct_of_bound']:.0f}% ({ENGINE_TITLES[e]})"
                            for e in present if e + "_pct_of_bound" in b)
            lines.append(f"- {b['model']}, {b['threads']} thread(s): bound = "
                         f"{b['bandwidth_gbs']:.1f} GB/s / "
                         f"{b['bytes_per_token'] / 1e9:.3f} GB per token = "
                         f"{b['bound_tps']:.2f} tok/s; decode = {pct} of bound")
        hows = sorted({b["bytes_counted"] for b in bounds})
        lines.append("")
        lines.append("Bytes per token counted as: " + "; ".join(hows) + ". KV cache and "
                     "activations are not counted; weights smaller than the last-level "
                     "cache make the bound meaningless.")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
