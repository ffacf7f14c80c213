"""The wheel: built from this tree, installed into a fresh environment, run outside the repository."""
import site
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the wheel; its dependencies come from this environment's site-packages
    (a plain path in a .pth file: this environment's editable install of mnisttext stays out)."""
    d = tmp_path_factory.mktemp("wheel")
    run = lambda *cmd, **kw: subprocess.run(cmd, capture_output=True, text=True, **kw)
    r = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(d / "dist"), str(ROOT))
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((d / "dist").glob("mnisttext-*.whl"))
    venv = d / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", str(venv)).returncode == 0
    py = venv / "bin" / "python"
    sp = run(str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    with open(f"{sp}/deps.pth", "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    r = run(sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel))
    if r.returncode:        # pip < 22.3 has no --python: unpack the wheel by hand
        with zipfile.ZipFile(wheel) as z:
            z.extractall(sp)
    return wheel, py, venv


@pytest.mark.slow
def test_wheel_carries_the_shipped_model_and_the_web_page(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("gpt/model.safetensors", "gpt/config.json", "gpt/tokenizer.json",
                 "classifier/model.safetensors", "eval_classifier/model.safetensors"):
        assert f"mnisttext/checkpoints/{name}" in names
    assert "mnisttext/static/index.html" in names and "mnisttext/examples.txt" in names


@pytest.mark.slow
def test_generate_from_a_folder_outside_the_repository(installed, tmp_path):
    _, py, venv = installed
    where = subprocess.run([str(py), "-c", "import mnisttext; print(mnisttext.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert where.returncode == 0 and str(venv) in where.stdout, where.stdout + where.stderr
    r = subprocess.run([str(py), "-m", "mnisttext", "generate", "--digits", "3", "--candidates",
                        "4", "--keep", "2", "--print"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.split()
    assert len(lines) == 2 and all(l[0] == "3" and len(l) == 152 for l in lines)
    assert (tmp_path / "outputs" / "3.png").exists()
    v = subprocess.run([str(py), "-m", "mnisttext", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("mnisttext ")
    script = venv / "bin" / "mnisttext"
    assert script.exists() and subprocess.run([str(script), "--help"], capture_output=True).returncode == 0
