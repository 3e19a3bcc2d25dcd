"""`linexport trt` refuses what it cannot finish before it builds anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from linexport.cli import main
from linexport.tensorrt_flavours import is_installed
from tests.conftest import tiny_linear_export

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_linear_export(tmp_path_factory.mktemp("trt-inputs"))[1]


def test_both_precisions_at_once_are_refused(export_dir):
    result = CliRunner().invoke(main, ["trt", str(export_dir), "--fp16", "--fp32", "--target", "rtx"])
    assert result.exit_code == 2 and "at most one of --fp16 and --fp32" in result.output


def test_a_file_as_out_gets_a_sane_suggestion(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("x")
    result = CliRunner().invoke(main, ["trt", str(file), "--target", "rtx"])
    assert result.exit_code == 2 and "got the file" in result.output
    assert f"-o {file}" not in result.output


@pytest.mark.skipif(not is_installed("rtx"), reason="pip install tensorrt-rtx-cu13 to run TensorRT-RTX builds")
def test_a_read_only_export_is_refused_before_building(export_dir, tmp_path):
    """OUT is made read-only; root (CI runs as root) is run without the capabilities that let it
    write anywhere, so the permissions apply to it too."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    out = tmp_path / "out"
    shutil.copytree(export_dir, out)
    os.chmod(out, 0o555)
    try:
        code = ("import sys; from linexport.cli import main; "
                "sys.argv = ['linexport', 'trt', sys.argv[1], '--target', 'rtx']; main()")
        result = subprocess.run([*prefix, sys.executable, "-c", code, str(out)], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 2, result.stderr
        assert "to be writable" in result.stderr and "Traceback" not in result.stderr
        assert "building the prefill engine" not in result.stderr, "it built before checking"
        assert not list(out.glob("*.engine"))
    finally:
        os.chmod(out, 0o755)
