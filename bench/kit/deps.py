"""Install what the benchmark needs when it is missing: the peer's packages and wrk.

Python packages go into the running interpreter's environment (`bench/requirements.txt`);
`wrk` comes from Debian (`apt-get install -y wrk`) when running as root, otherwise the
harness stops with the command to run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
MODULES = ("fastapi", "fastapi_plugin", "auth0_api_python", "psutil", "uvloop", "httptools")


class MissingTool(RuntimeError):
    pass


def ensure_python_packages() -> None:
    missing = [name for name in MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return
    print(f"installing the benchmark's packages ({', '.join(missing)} missing)", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)]
    if subprocess.run(command, check=False).returncode != 0:
        raise MissingTool(f"could not install {REQUIREMENTS}; run: {' '.join(command)}")
    importlib.invalidate_caches()


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise MissingTool("wrk is not installed; install it with: sudo apt-get install -y wrk")
    print("installing wrk (apt-get install -y wrk)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, env=env, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
        subprocess.run(install, env=env, check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise MissingTool("apt-get could not install wrk; install it and run again")
    return found


def ensure_py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found:
        return found
    command = [sys.executable, "-m", "pip", "install", "--quiet", "py-spy"]
    subprocess.run(command, check=False)
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if not found:
        raise MissingTool("py-spy is not installed; run: pip install py-spy")
    return found
