"""Tests of scripts/setup.py's model installation: a conversion that fails, is interrupted or
does not pass its check leaves the installed model as it was, and nothing half-written behind;
a good one replaces it whole. The conversion itself (about 30 s and 1 GB) is replaced by a stub
that writes a small model directory; everything else is setup.py's own code on a real disk.

Run: python3 -m unittest discover -s scripts -p 'test_*.py'   (scripts/test.sh runs it)
"""

import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
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


if __name__ == "__main__":
    unittest.main()
