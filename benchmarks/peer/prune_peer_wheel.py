"""Shrink NVIDIA's subquadratic-ops-torch-cu13 wheel to fit the device's 64 MiB carry limit.

The wheel's libsubquadratic_ops.so (285 MB) holds cubins for sm_80/86/90/100 in .nv_fatbin and
the relocatable per-object device code (__nv_relfatbin, used only for further device linking).
An H100 loads only the sm_90 cubin of the linked fatbin, so we zero the payloads of every other
entry (headers kept, so the file layout and every offset stay the same) and zero __nv_relfatbin
unless --keep-rel. Zeros compress to nothing in the wheel's zip. Headers, tests, CUTLASS sources
and static libraries that the Python ops never load are dropped.

usage: python benchmarks/peer/prune_peer_wheel.py orig/subquadratic_ops_torch_cu13-*.whl OUT_DIR [--keep-rel]
(benchmarks/peer/fetch_peer_wheels.sh does the whole job)
"""
import base64, hashlib, re, struct, subprocess, sys, zipfile

SRC, OUT_DIR = sys.argv[1], sys.argv[2]
KEEP_REL = "--keep-rel" in sys.argv
KEEP_SM = 90
DROP = ("/_deps/", "/include/", "/lib64/", "/tests/")


def sections(path):
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m:
            res[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return res


def prune_fatbins(buf, off, size, keep):
    """Zero payloads of fatbin entries whose arch is not kept (keep(kind, sm) -> bool)."""
    p, end, zeroed = off, off + size, 0
    while p < end:
        magic, _, hs, fs = struct.unpack_from("<IHHQ", buf, p)
        if magic != 0xBA55ED50:
            p += 8
            continue
        q = p + hs
        while q < p + hs + fs:
            kind, _, ehs, pps = struct.unpack_from("<HHIQ", buf, q)
            sm = struct.unpack_from("<I", buf, q + 28)[0]
            if not keep(kind, sm):
                buf[q + ehs:q + ehs + pps] = bytes(pps)
                zeroed += pps
            q += ehs + pps
        p += hs + fs
    return zeroed


import os, tempfile
os.makedirs(OUT_DIR, exist_ok=True)
zin = zipfile.ZipFile(SRC)
name = os.path.basename(SRC)
records, out_path = [], os.path.join(OUT_DIR, name)
with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    record_name = None
    for info in zin.infolist():
        n = info.filename
        if any(d in n for d in DROP):
            continue
        if n.endswith("dist-info/RECORD"):
            record_name = n
            continue
        data = zin.read(n)
        if n.endswith("libsubquadratic_ops.so"):
            with tempfile.NamedTemporaryFile(suffix=".so") as tmp:
                tmp.write(data); tmp.flush()
                secs = sections(tmp.name)
            buf = bytearray(data)
            z = prune_fatbins(buf, *secs[".nv_fatbin"], keep=lambda kind, sm: kind == 2 and sm == KEEP_SM)
            z += prune_fatbins(buf, *secs["__nv_relfatbin"], keep=lambda kind, sm: KEEP_REL and sm == KEEP_SM)
            print(f"zeroed {z / 1e6:.1f} MB of device code for other architectures")
            data = bytes(buf)
        zi = zipfile.ZipInfo(n, date_time=info.date_time)
        zi.external_attr = info.external_attr
        zi.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(zi, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        records.append(f"{n},sha256={digest},{len(data)}")
    records.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(records) + "\n")
print(out_path, f"{os.path.getsize(out_path) / 2**20:.1f} MiB")
