"""Tests of scripts/setup.py's model installation: a conversion that fails, is interrupted or
does not pass its check leaves the installed model as it was, and nothing half-written behind;
a good one replaces it whole. The conversion itself (about 30 s and 1 GB) is replaced by a stub
that writes a small model directory; everything else is setup.py's own code on a real disk.
Also the steps around it, offline (pip and the venv creation are faked): a venv left without pip
is recreated, the tools are installed from scripts/tools.lock with every hash checked (and
lock_tools.py writes that lock), downloads use the venv's pip, the host and the home are checked
first with the fix named, and a relative EDGEROUTE_HOME means the caller's directory in demo.sh
and test.sh.

Run: python3 -m unittest discover -s scripts -p 'test_*.py'   (scripts/test.sh runs it)
"""

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lock_tools  # noqa: E402
import setup  # noqa: E402


def write_model(model_dir, weights):
    """A model directory with a valid manifest over one weights file."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "model.onnx.data"), "w") as f:
        f.write(weights)
    manifest = {
        "manifest_version": setup.MANIFEST_VERSION,
        "source": {"sha256": setup.MODEL["member_sha256"]},
        "quantization": {"accuracy_level": 4},
        "files": {"model.onnx.data": setup.sha256(os.path.join(model_dir, "model.onnx.data"))},
    }
    with open(os.path.join(model_dir, setup.MANIFEST), "w") as f:
        json.dump(manifest, f)


def read_weights(model_dir):
    with open(os.path.join(model_dir, "model.onnx.data")) as f:
        return f.read()


class EnsureModel(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp()
        self.models = os.path.join(self.home, "models")
        self.model_dir = os.path.join(self.models, setup.MODEL_NAME)
        write_model(self.model_dir, "old weights")
        # The download is not under test.
        patcher = mock.patch.object(setup, "extract_member", lambda *a, **k: None)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.addCleanup(lambda: __import__("shutil").rmtree(self.home, ignore_errors=True))

    def run_setup(self, convert, smoke_test=lambda py, d: None, force=True):
        out = io.StringIO()
        with mock.patch.object(setup, "convert", convert), \
                mock.patch.object(setup, "smoke_test", smoke_test), \
                redirect_stdout(out), redirect_stderr(out):
            setup.ensure_model(self.home, "python3", 4, force=force, check=True)
        return out.getvalue()

    def assert_only_the_model_is_left(self):
        self.assertEqual(os.listdir(self.models), [setup.MODEL_NAME])

    def test_a_good_conversion_replaces_the_model_whole(self):
        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
        self.run_setup(convert)
        self.assertEqual(read_weights(self.model_dir), "new weights")
        self.assertTrue(setup.manifest_valid(self.model_dir, 4))
        self.assert_only_the_model_is_left()

    def test_a_failed_conversion_leaves_the_installed_model(self):
        def convert(py, gguf, staging, accuracy):
            write_model(staging, "half")
            raise OSError(28, "No space left on device")
        with self.assertRaises(OSError):
            self.run_setup(convert)
        self.assertEqual(read_weights(self.model_dir), "old weights")
        self.assertTrue(setup.manifest_valid(self.model_dir, 4))
        self.assert_only_the_model_is_left()

    def test_an_interrupted_conversion_leaves_the_installed_model(self):
        def convert(py, gguf, staging, accuracy):
            write_model(staging, "half")
            raise KeyboardInterrupt
        with self.assertRaises(KeyboardInterrupt):
            self.run_setup(convert)
        self.assertEqual(read_weights(self.model_dir), "old weights")
        self.assert_only_the_model_is_left()

    def test_a_model_that_fails_its_check_is_not_installed(self):
        def convert(py, gguf, staging, accuracy):
            write_model(staging, "wrong answers")

        def smoke_test(py, staging):
            self.assertEqual(read_weights(staging), "wrong answers")
            setup.fail("capitals check failed")
        with self.assertRaises(SystemExit):
            self.run_setup(convert, smoke_test)
        self.assertEqual(read_weights(self.model_dir), "old weights")
        self.assert_only_the_model_is_left()

    def test_a_valid_model_is_left_alone(self):
        def convert(py, gguf, staging, accuracy):
            self.fail("converted a model that was up to date")
        out = self.run_setup(convert, force=False)
        self.assertIn("up to date", out)
        self.assertEqual(read_weights(self.model_dir), "old weights")

    def test_a_damaged_model_is_converted_again(self):
        with open(os.path.join(self.model_dir, "model.onnx.data"), "w") as f:
            f.write("bit rot")

        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
        out = self.run_setup(convert, force=False)
        self.assertIn("does not match its recorded SHA-256", out)
        self.assertEqual(read_weights(self.model_dir), "new weights")

    def test_a_leftover_staging_directory_is_cleared_first(self):
        staging = os.path.join(self.models, f".{setup.MODEL_NAME}.staging")
        write_model(staging, "leftover of an interrupted run")

        def convert(py, gguf, staging_dir, accuracy):
            self.assertEqual(os.listdir(staging_dir), [])
            write_model(staging_dir, "new weights")
        self.run_setup(convert)
        self.assertEqual(read_weights(self.model_dir), "new weights")
        self.assert_only_the_model_is_left()

    def test_too_little_disk_space_is_said_before_converting(self):
        def convert(py, gguf, staging, accuracy):
            self.fail("converted without the space for it")
        full = mock.Mock(free=100 << 20)
        with mock.patch.object(setup.shutil, "disk_usage", lambda p: full):
            with self.assertRaises(SystemExit):
                out = io.StringIO()
                with redirect_stderr(out), redirect_stdout(out):
                    setup.ensure_model(self.home, "python3", 4, force=True)
        self.assertIn("MB free", out.getvalue())
        self.assertEqual(read_weights(self.model_dir), "old weights")

    def modes(self, model_dir):
        return {name: stat.S_IMODE(os.stat(os.path.join(model_dir, name)).st_mode)
                for name in [".", *os.listdir(model_dir)]}

    def test_the_installed_model_is_readable_by_all_users(self):
        # onnx writes model.onnx.data 0600; under sudo the model would be root's alone.
        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
            os.chmod(os.path.join(staging, "model.onnx.data"), 0o600)
            os.chmod(os.path.join(staging, setup.MANIFEST), 0o640)
            os.chmod(staging, 0o700)
        self.run_setup(convert)
        self.assertEqual(read_weights(self.model_dir), "new weights")
        self.assertEqual(self.modes(self.model_dir),
                         {".": 0o755, "model.onnx.data": 0o644, setup.MANIFEST: 0o644})

    def test_an_installed_model_readable_by_its_owner_only_is_fixed_without_converting(self):
        os.chmod(os.path.join(self.model_dir, "model.onnx.data"), 0o600)
        os.chmod(self.model_dir, 0o700)

        def convert(py, gguf, staging, accuracy):
            self.fail("converted a valid model to fix its modes")
        out = self.run_setup(convert, force=False)
        self.assertIn("made readable by all users", out)
        self.assertIn("model.onnx.data (was 0600)", out)
        self.assertIn("up to date", out)
        self.assertEqual(self.modes(self.model_dir),
                         {".": 0o755, "model.onnx.data": 0o644, setup.MANIFEST: 0o644})
        self.assertEqual(read_weights(self.model_dir), "old weights")

    def assert_an_unreadable_file_is_reported_and_reinstalled(self, out):
        self.assertIn("model.onnx.data cannot be read", out)
        self.assertNotIn("up to date", out)
        self.assertEqual(read_weights(self.model_dir), "new weights")
        self.assertEqual(self.modes(self.model_dir)["model.onnx.data"], 0o644)

    def test_a_model_file_that_cannot_be_read_is_reported_and_reinstalled(self):
        # Root reads any file, so the refusal (what another user gets from a 0600 file
        # of root's) is simulated at the open.
        data = os.path.join(self.model_dir, "model.onnx.data")
        real_sha256 = setup.sha256

        def sha256(path):
            if path == data and read_weights(self.model_dir) == "old weights":
                raise PermissionError(13, "Permission denied", path)
            return real_sha256(path)

        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
        with mock.patch.object(setup, "sha256", sha256):
            out = self.run_setup(convert, force=False)
        self.assert_an_unreadable_file_is_reported_and_reinstalled(out)

    def test_a_model_file_without_read_permission_is_reported_and_reinstalled(self):
        data = os.path.join(self.model_dir, "model.onnx.data")
        os.chmod(data, 0)
        if os.access(data, os.R_OK):
            self.skipTest("permissions are not enforced for this user (root); "
                          "test_a_model_file_that_cannot_be_read_is_reported_and_reinstalled covers it")

        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
        out = self.run_setup(convert, force=False)
        self.assert_an_unreadable_file_is_reported_and_reinstalled(out)

    def test_a_set_up_killed_between_the_renames_leaves_the_old_model_restored_next_run(self):
        staging = os.path.join(self.models, f".{setup.MODEL_NAME}.staging")
        real_rename = os.rename

        def rename(src, dst):
            if src == staging:
                raise KeyboardInterrupt  # killed after the installed model was moved aside
            real_rename(src, dst)

        def convert(py, gguf, staging_dir, accuracy):
            write_model(staging_dir, "new weights")
        with mock.patch.object(setup.os, "rename", rename), self.assertRaises(KeyboardInterrupt):
            self.run_setup(convert)
        self.assertFalse(os.path.exists(self.model_dir))
        self.assertTrue(setup.manifest_valid(self.model_dir + ".old", 4))

        def convert_again(py, gguf, staging_dir, accuracy):
            self.fail("converted again though the old model was still there")
        out = self.run_setup(convert_again, force=False)
        self.assertEqual(sum("restored" in line for line in out.splitlines()), 1, out)
        self.assertIn("up to date", out)
        self.assertEqual(read_weights(self.model_dir), "old weights")
        self.assert_only_the_model_is_left()

    def test_a_stale_old_model_next_to_the_installed_one_is_removed(self):
        write_model(self.model_dir + ".old", "older weights")

        def convert(py, gguf, staging, accuracy):
            self.fail("converted a valid model")
        out = self.run_setup(convert, force=False)
        self.assertIn("up to date", out)
        self.assertNotIn("restored", out)
        self.assertEqual(read_weights(self.model_dir), "old weights")
        self.assert_only_the_model_is_left()

    def test_an_invalid_old_model_alone_is_not_restored(self):
        os.rename(self.model_dir, self.model_dir + ".old")
        with open(os.path.join(self.model_dir + ".old", "model.onnx.data"), "w") as f:
            f.write("half deleted")

        def convert(py, gguf, staging, accuracy):
            write_model(staging, "new weights")
        out = self.run_setup(convert, force=False)
        self.assertNotIn("restored", out)
        self.assertEqual(read_weights(self.model_dir), "new weights")
        self.assert_only_the_model_is_left()



def capture(fn, *args, **kw):
    """Runs fn, returning (its result or the SystemExit, everything it printed)."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            result = fn(*args, **kw)
        except SystemExit as e:
            result = e
    return result, out.getvalue()


class EnsureTools(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.home, ignore_errors=True)
        self.venv = os.path.join(self.home, "tools", "venv")
        self.py = os.path.join(self.venv, "bin", "python")
        self.commands = []

    def fake_run(self, venv_returncode=0):
        """run() without network: `-m venv` makes a stand-in venv whose python answers 0 to
        anything (so `-m pip --version` works), pip install does nothing."""
        def run(cmd, check=True, **kw):
            self.commands.append(list(cmd))
            if cmd[1:3] == ["-m", "venv"]:
                self.assertFalse(os.path.exists(self.venv), "the broken venv was not removed first")
                if venv_returncode == 0:
                    os.makedirs(os.path.dirname(self.py))
                    with open(self.py, "w") as f:
                        f.write("#!/bin/sh\nexit 0\n")
                    os.chmod(self.py, 0o755)
                else:
                    os.makedirs(os.path.dirname(self.py))  # what a failed venv leaves: no pip
                return subprocess.CompletedProcess(cmd, venv_returncode)
            return subprocess.CompletedProcess(cmd, 0)
        return run

    def test_a_venv_without_pip_is_recreated(self):
        # What `python3 -m venv` leaves on Debian without python3-venv, or when interrupted.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", self.venv], check=True)
        leftover = os.path.join(self.venv, "leftover")
        open(leftover, "w").close()
        self.assertTrue(os.path.exists(self.py))
        self.assertFalse(setup.venv_works(self.py))
        with mock.patch.object(setup, "run", self.fake_run()):
            py, out = capture(setup.ensure_tools, self.home)
        self.assertEqual(py, self.py, out)
        self.assertIn("recreating it", out)
        self.assertFalse(os.path.exists(leftover))
        self.assertEqual(self.commands[0], [sys.executable, "-m", "venv", self.venv])
        self.assertEqual(self.commands[1][:4], [self.py, "-m", "pip", "install"])
        self.assertEqual(len(self.commands), 2)
        with open(os.path.join(self.venv, "edgeroute-tools.txt")) as f, open(setup.TOOLS_LOCK) as lock:
            self.assertEqual(f.read(), lock.read())

    def test_the_tools_are_installed_from_the_lock_with_every_hash_checked(self):
        with mock.patch.object(setup, "run", self.fake_run()):
            py, out = capture(setup.ensure_tools, self.home)
        self.assertEqual(py, self.py, out)
        install = self.commands[1]
        self.assertEqual(install[:4], [self.py, "-m", "pip", "install"])
        # Hash-checking mode, nothing pip would resolve by itself, no source builds, the lock.
        for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
            self.assertIn(flag, install)
        self.assertEqual(install[install.index("-r") + 1], setup.TOOLS_LOCK)
        self.assertIn("onnxruntime==1.32.0", out)  # the pins are said

    def test_a_venv_from_another_lock_is_recreated_without_its_leftovers(self):
        # A venv the set-up made before the lock: its stamp lists six top-level packages.
        os.makedirs(os.path.dirname(self.py))
        with open(self.py, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(self.py, 0o755)
        with open(os.path.join(self.venv, "edgeroute-tools.txt"), "w") as f:
            f.write("gguf==0.19.0\nonnx==1.23.2\n")
        leftover = os.path.join(self.venv, "huggingface_hub")
        os.makedirs(leftover)
        with mock.patch.object(setup, "run", self.fake_run()):
            py, out = capture(setup.ensure_tools, self.home)
        self.assertEqual(py, self.py, out)
        self.assertIn("not a finished install of this tools.lock", out)
        self.assertFalse(os.path.exists(leftover), "a package the lock does not name was kept")
        self.assertEqual(self.commands[0], [sys.executable, "-m", "venv", self.venv])

    def test_a_venv_holding_the_lock_is_left_alone(self):
        os.makedirs(os.path.dirname(self.py))
        with open(self.py, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")  # every import probe succeeds
        os.chmod(self.py, 0o755)
        with open(setup.TOOLS_LOCK) as lock, open(os.path.join(self.venv, "edgeroute-tools.txt"), "w") as f:
            f.write(lock.read())
        with mock.patch.object(setup, "run", self.fake_run()):
            py, out = capture(setup.ensure_tools, self.home)
        self.assertEqual(py, self.py, out)
        self.assertIn("up to date", out)
        self.assertEqual(self.commands, [])

    def test_a_failed_locked_install_names_the_causes_and_writes_no_stamp(self):
        fake = self.fake_run()

        def run(cmd, check=True, **kw):
            if "install" in cmd:
                self.commands.append(list(cmd))
                return subprocess.CompletedProcess(cmd, 1)  # e.g. a hash mismatch
            return fake(cmd, check, **kw)
        with mock.patch.object(setup, "run", run):
            result, out = capture(setup.ensure_tools, self.home)
        self.assertIsInstance(result, SystemExit)
        self.assertIn("DO NOT MATCH THE HASHES", out)
        self.assertIn("No matching distribution", out)
        self.assertIn("run the same command again", out)
        self.assertFalse(os.path.exists(os.path.join(self.venv, "edgeroute-tools.txt")),
                         "a failed install was stamped as done")

    def test_a_venv_an_older_python_made_is_recreated(self):
        # A venv left by an earlier run with Python 3.10 (its pip install of the tools failed):
        # here a python that answers the version probe "too old" (exit 3) and has pip.
        os.makedirs(os.path.dirname(self.py))
        with open(self.py, "w") as f:
            f.write("#!/bin/sh\ncase \"$*\" in *version_info*) exit 3;; esac\nexit 0\n")
        os.chmod(self.py, 0o755)
        self.assertFalse(setup.venv_works(self.py))
        with mock.patch.object(setup, "run", self.fake_run()):
            py, out = capture(setup.ensure_tools, self.home)
        self.assertEqual(py, self.py, out)
        self.assertIn("recreating it", out)
        self.assertEqual(self.commands[0], [sys.executable, "-m", "venv", self.venv])

    def test_a_failed_venv_creation_names_the_fix(self):
        with mock.patch.object(setup, "run", self.fake_run(venv_returncode=1)):
            result, out = capture(setup.ensure_tools, self.home)
        self.assertIsInstance(result, SystemExit)
        self.assertIn("apt install python3-venv", out)
        self.assertIn(f"python{sys.version_info[0]}.{sys.version_info[1]}-venv", out)
        self.assertIn("run the same command again", out)
        self.assertFalse(os.path.exists(self.venv), "a venv without pip was left behind")
        self.assertEqual(len(self.commands), 1, "pip install ran without a venv")


class ToolsLock(unittest.TestCase):
    """scripts/lock_tools.py, offline: which wheels it keeps, and the lock it writes."""

    def test_only_wheels_of_the_pinned_version_that_install_on_x86_64_linux_are_kept(self):
        keep = [
            "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "numpy-2.4.6-cp313-cp313t-musllinux_1_2_x86_64.whl",
            "PyYAML-6.0.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "tokenizers-0.23.3-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "onnx_ir-1.1.0-py3-none-any.whl",
        ]
        drop = [
            "numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
            "numpy-2.4.6-cp311-cp311-win_amd64.whl",
            "numpy-2.4.6-cp311-cp311-macosx_14_0_x86_64.whl",
            "numpy-2.4.6.tar.gz",
            "numpy-2.4.5-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "numpyx-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl",
        ]
        names = {"numpy": "2.4.6", "pyyaml": "6.0.4", "tokenizers": "0.23.3", "onnx-ir": "1.1.0"}

        def kept(filename):
            return any(lock_tools.wanted_wheel(filename, n, v) for n, v in names.items())
        for f in keep:
            self.assertTrue(kept(f), f)
        for f in drop:
            self.assertFalse(kept(f), f)

    def test_hashes_come_from_the_index_entries_of_the_kept_wheels(self):
        files = [
            {"filename": "gguf-0.19.0-py3-none-any.whl", "hashes": {"sha256": "bb"}},
            {"filename": "gguf-0.19.0.tar.gz", "hashes": {"sha256": "cc"}},
            {"filename": "gguf-0.18.0-py3-none-any.whl", "hashes": {"sha256": "dd"}},
            {"filename": "gguf-0.19.0-py2-none-any.whl", "hashes": {"sha256": "aa"}},
        ]
        self.assertEqual(lock_tools.wheel_hashes("gguf", "0.19.0", files), ["aa", "bb"])
        with self.assertRaisesRegex(ValueError, "no x86_64 Linux"):
            lock_tools.wheel_hashes("gguf", "9.9", files)

    def test_a_lock_is_rewritten_with_its_comments_and_order(self):
        text = "# head\nb==2 \\\n    --hash=sha256:old\n# about a\na==1\n# tail\n"
        pins, trailing = lock_tools.parse_lock(text)
        self.assertEqual([(n, v) for n, v, _ in pins], [("b", "2"), ("a", "1")])
        out = lock_tools.render(pins, trailing, {("b", "2"): ["x", "y"], ("a", "1"): ["z"]})
        self.assertEqual(out, "# head\nb==2 \\\n    --hash=sha256:x \\\n    --hash=sha256:y\n"
                              "# about a\na==1 \\\n    --hash=sha256:z\n# tail\n")
        with self.assertRaisesRegex(ValueError, "line 2"):
            lock_tools.parse_lock("a==1\nb>=2\n")

    def test_the_committed_lock_pins_every_package_to_hashes(self):
        with open(setup.TOOLS_LOCK) as f:
            text = f.read()
        pins, _ = lock_tools.parse_lock(text)
        self.assertEqual(setup.tool_pins(text), [f"{n}=={v}" for n, v, _ in pins])
        names = {lock_tools.normalize(n) for n, _, _ in pins}
        # What the converter, the reference script and the set-up's probe import, and their imports.
        for needed in ("gguf", "numpy", "pyyaml", "onnx", "protobuf", "ml-dtypes", "onnx-ir", "sympy",
                       "onnxruntime", "tokenizers"):
            self.assertIn(needed, names)
        blocks = text.split("==")[1:]
        self.assertEqual(len(blocks), len(pins))
        for (name, _, _), block in zip(pins, blocks):
            self.assertRegex(block, r"--hash=sha256:[0-9a-f]{64}", name)


class Downloads(unittest.TestCase):
    def test_pip_download_uses_the_venv_python(self):
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, ignore_errors=True)
        venv_py = os.path.join(home, "tools", "venv", "bin", "python")
        commands = []

        def run(cmd, check=True, **kw):
            commands.append(list(cmd))
            return subprocess.CompletedProcess(cmd, 0)
        with mock.patch.object(setup, "run", run):
            result, out = capture(setup.ensure_runtime, home, venv_py)
        self.assertIsInstance(result, SystemExit)  # the fake pip downloads nothing
        self.assertIn("pip did not produce", out)
        self.assertEqual(len(commands), 1)
        self.assertEqual(commands[0][:4], [venv_py, "-m", "pip", "download"])
        self.assertIn(setup.RUNTIME["requirement"], commands[0])


class CheckHost(unittest.TestCase):
    def check(self, version=(3, 11, 7, "final", 0), machine="x86_64", plat="linux"):
        with mock.patch.object(setup.sys, "version_info", version), \
                mock.patch.object(setup.sys, "platform", plat), \
                mock.patch.object(setup.platform, "machine", lambda: machine):
            return capture(setup.check_host)

    def test_x86_64_linux_with_python_3_11_passes(self):
        result, out = self.check()
        self.assertIsNone(result, out)
        self.assertEqual(out, "")

    def test_an_old_python_is_refused_with_the_minimum(self):
        self.assertEqual(setup.MIN_PYTHON, (3, 11))
        result, out = self.check(version=(3, 10, 12, "final", 0))
        self.assertIsInstance(result, SystemExit)
        self.assertIn("Python 3.11 or newer is needed", out)
        self.assertIn("3.10.12", out)

    def test_a_non_x86_64_machine_is_refused(self):
        result, out = self.check(machine="aarch64")
        self.assertIsInstance(result, SystemExit)
        self.assertIn("x86_64 Linux only", out)
        self.assertIn("aarch64", out)

    def test_a_non_linux_system_is_refused(self):
        result, out = self.check(plat="darwin")
        self.assertIsInstance(result, SystemExit)
        self.assertIn("x86_64 Linux only", out)


class Home(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def assert_refused_with_the_fix(self, home):
        result, out = capture(setup.open_home, home)
        self.assertIsInstance(result, SystemExit, out)
        self.assertIn(home, out)
        self.assertIn("set EDGEROUTE_HOME (or --home) to a writable directory", out)
        self.assertNotIn("Traceback", out)
        return out

    def test_a_home_under_a_file_is_refused_with_the_fix(self):
        # ENOTDIR: fails for root too.
        not_a_dir = os.path.join(self.tmp, "file")
        open(not_a_dir, "w").close()
        out = self.assert_refused_with_the_fix(os.path.join(not_a_dir, "edgeroute"))
        self.assertIn("Not a directory", out)

    def read_only_dir(self):
        ro = os.path.join(self.tmp, "ro")
        os.mkdir(ro)
        os.chmod(ro, stat.S_IRUSR | stat.S_IXUSR)
        self.addCleanup(os.chmod, ro, stat.S_IRWXU)
        if os.access(ro, os.W_OK):
            self.skipTest("permissions are not enforced for this user (root)")
        return ro

    def test_a_home_in_a_read_only_directory_is_refused_with_the_fix(self):
        self.assert_refused_with_the_fix(os.path.join(self.read_only_dir(), "edgeroute"))

    def test_a_read_only_home_is_refused_with_the_fix(self):
        # The home exists but its lock file cannot be created.
        self.assert_refused_with_the_fix(self.read_only_dir())

    def test_a_writable_home_is_created_and_its_lock_opened(self):
        home = os.path.join(self.tmp, "a", "edgeroute")
        lock, out = capture(setup.open_home, home)
        self.addCleanup(lock.close)
        self.assertEqual(lock.name, os.path.join(home, ".setup.lock"))

    def default_home(self, **env):
        clean = {k: v for k, v in os.environ.items() if k not in ("EDGEROUTE_HOME", "XDG_DATA_HOME")}
        with mock.patch.dict(os.environ, dict(clean, **env), clear=True):
            return setup.default_home()

    def test_default_home_ignores_a_relative_xdg_data_home(self):
        fallback = os.path.join(os.path.expanduser("~"), ".local", "share", "edgeroute")
        self.assertEqual(self.default_home(), fallback)
        self.assertEqual(self.default_home(XDG_DATA_HOME="relative/data"), fallback)
        self.assertEqual(self.default_home(XDG_DATA_HOME=""), fallback)
        self.assertEqual(self.default_home(XDG_DATA_HOME="/srv/data"), "/srv/data/edgeroute")
        self.assertEqual(self.default_home(EDGEROUTE_HOME="/srv/home", XDG_DATA_HOME="/srv/data"), "/srv/home")
        self.assertEqual(self.default_home(EDGEROUTE_HOME=""), fallback)


class ScriptsResolveARelativeHome(unittest.TestCase):
    """demo.sh and test.sh cd to the repository before the set-up; a relative EDGEROUTE_HOME
    must still mean the caller's directory, as it does for the edgeroute binary. A stand-in
    python3 prints the home the set-up would get and stops the script (no set-up, no cargo)."""

    def setUp(self):
        self.tmp = os.path.realpath(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.bin = os.path.join(self.tmp, "bin")
        os.mkdir(self.bin)
        with open(os.path.join(self.bin, "python3"), "w") as f:
            f.write('#!/bin/sh\necho "EDGEROUTE_HOME=${EDGEROUTE_HOME-unset}"\nexit 3\n')
        os.chmod(os.path.join(self.bin, "python3"), 0o755)

    def home_seen_by_setup(self, script, home):
        env = dict(os.environ, PATH=self.bin + os.pathsep + os.environ["PATH"],
                   CARGO_TARGET_DIR=os.path.join(self.tmp, "target"))
        env.pop("EDGEROUTE_HOME", None)
        if home is not None:
            env["EDGEROUTE_HOME"] = home
        r = subprocess.run(["bash", os.path.join(os.path.dirname(os.path.abspath(__file__)), script)],
                           cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.assertEqual(r.returncode, 3, r.stdout)
        return [l for l in r.stdout.splitlines() if l.startswith("EDGEROUTE_HOME=")][0].split("=", 1)[1]

    def test_demo_and_test_scripts(self):
        for script in ("demo.sh", "test.sh"):
            with self.subTest(script=script):
                self.assertEqual(self.home_seen_by_setup(script, "rel/home"), os.path.join(self.tmp, "rel", "home"))
                self.assertEqual(self.home_seen_by_setup(script, "/abs/home"), "/abs/home")
                self.assertEqual(self.home_seen_by_setup(script, ""), "")
                self.assertEqual(self.home_seen_by_setup(script, None), "unset")


if __name__ == "__main__":
    unittest.main()
