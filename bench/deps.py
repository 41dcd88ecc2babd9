"""How much the serving image installs: its requirements in a fresh venv, or installed distributions.

The serving image's size and imports are its cold start; the venv stands in for the image.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata

from bench import ROOT


def venv_size(requirements):
    """Install ``requirements`` into a fresh venv; return its size (MiB) and the biggest packages."""
    tmp = tempfile.mkdtemp(prefix="serve-deps-")
    try:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        subprocess.run([f"{tmp}/bin/pip", "install", "-q", "--disable-pip-version-check", "-r", requirements],
                       check=True)
        # pip and setuptools come with every venv and are not serving dependencies
        subprocess.run([f"{tmp}/bin/pip", "uninstall", "-q", "-y", "setuptools", "pip"], check=True)
        site = subprocess.run([f"{tmp}/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        total = du(tmp)
        packages = sorted(((name, du(os.path.join(site, name))) for name in os.listdir(site)
                           if os.path.isdir(os.path.join(site, name))), key=lambda x: -x[1])
        return {"requirements": os.path.relpath(requirements, ROOT), "venv_mib": round(total / 2**20, 1),
                "site_packages_mib": round(du(site) / 2**20, 1),
                "largest": {name: round(size / 2**20, 1) for name, size in packages[:8]}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.stat(p).st_blocks * 512
    return total


def installed_size(dist_names):
    """Size (MiB) of installed distributions and everything they require, from this
    interpreter's metadata (for the baseline, whose torch we do not reinstall)."""
    seen, todo, total = set(), list(dist_names), 0
    while todo:
        name = re.split(r"[ ;<>=!~\[]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            try:
                total += os.stat(f.locate()).st_blocks * 512
            except OSError:
                pass
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return {"distributions": sorted(seen), "mib": round(total / 2**20, 1)}
