"""A workspace as users have them: a git repository with unpushed commits (its refs
packed, so some of its folders are empty), a virtualenv, a ``node_modules`` folder with
links, a cache, and one large file. Standard library only: the end-to-end test sends
these functions' source to a kernel on the server (``inspect.getsource``) and runs them
there, as the server's user."""

from __future__ import annotations


def make_project(root: str, big_bytes: int) -> dict:
    """Build the project below ``root`` and return :func:`look_at` of it. The remote the
    repository pushed to lies outside ``root``."""
    import os
    import subprocess
    import sys
    import tempfile

    env = dict(os.environ, GIT_AUTHOR_NAME="Ada", GIT_AUTHOR_EMAIL="ada@example.org",
               GIT_COMMITTER_NAME="Ada", GIT_COMMITTER_EMAIL="ada@example.org", GIT_CONFIG_NOSYSTEM="1",
               GIT_CONFIG_GLOBAL=os.devnull)

    def git(*args, cwd):
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    repo = os.path.join(root, "repo")
    remote = tempfile.mkdtemp(prefix="remote-") + "/origin.git"
    git("init", "--bare", "-b", "main", remote, cwd=root)
    git("init", "-b", "main", repo, cwd=root)
    git("remote", "add", "origin", remote, cwd=repo)
    for i in range(3):
        with open(os.path.join(repo, "train.py"), "a") as f:
            f.write(f"step_{i} = {i}\n")
        git("add", "train.py", cwd=repo)
        git("commit", "-m", f"step {i}", cwd=repo)
        if i == 0:
            git("push", "origin", "main", cwd=repo)
            git("fetch", "origin", cwd=repo)
    os.chmod(os.path.join(repo, "train.py"), 0o755)
    git("add", "train.py", cwd=repo)
    git("commit", "-m", "executable", cwd=repo)
    git("gc", "--quiet", cwd=repo)  # packs the refs: refs/heads and refs/tags are left empty

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(root, ".venv")], check=True)
    pkg = os.path.join(root, "node_modules", "left-pad")
    os.makedirs(pkg)
    with open(os.path.join(pkg, "index.js"), "w") as f:
        f.write("module.exports = (s, n) => s.padStart(n);\n")
    os.makedirs(os.path.join(root, "node_modules", ".bin"))
    os.symlink("../left-pad/index.js", os.path.join(root, "node_modules", ".bin", "left-pad"))
    os.makedirs(os.path.join(root, "node_modules", "empty-pkg"))

    os.makedirs(os.path.join(root, "lib", "__pycache__"))
    with open(os.path.join(root, "lib", "__pycache__", "util.cpython-311.pyc"), "wb") as f:
        f.write(b"\0" * 100)
    with open(os.path.join(root, "lib", "util.py"), "w") as f:
        f.write("X = 1\n")
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    with open(os.path.join(root, "data", "big.bin"), "wb") as f:
        f.write(os.urandom(big_bytes))
    return look_at(root)


def look_at(root: str) -> dict:
    """What the project is, as git, the virtualenv and ``ls -l`` see it."""
    import os
    import subprocess

    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    repo = os.path.join(root, "repo")

    def git(*args):
        done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr

    venv_python = os.path.join(root, ".venv", "bin", "python")
    prefix = subprocess.run([venv_python, "-c", "import sys; print(sys.prefix)"], capture_output=True,
                            text=True).stdout.strip()
    return {
        "log": git("log", "--format=%H %s")[1].splitlines(),
        "status": git("status", "--porcelain"),
        "ahead": git("rev-list", "--count", "origin/main..main")[1].strip(),
        "fsck": git("fsck", "--full", "--strict")[0],
        "empty_ref_dirs": sorted(d for d in ("refs/heads", "refs/tags")
                                 if os.path.isdir(os.path.join(repo, ".git", d))),
        "train_mode": oct(os.stat(os.path.join(repo, "train.py")).st_mode & 0o777),
        "venv_links": {n: os.readlink(os.path.join(root, ".venv", "bin", n))
                       for n in sorted(os.listdir(os.path.join(root, ".venv", "bin")))
                       if os.path.islink(os.path.join(root, ".venv", "bin", n))},
        "venv_prefix_is_here": prefix == os.path.join(root, ".venv") or os.path.realpath(prefix) ==
        os.path.realpath(os.path.join(root, ".venv")),
        "node_link": os.readlink(os.path.join(root, "node_modules", ".bin", "left-pad")),
        "node_script": open(os.path.join(root, "node_modules", ".bin", "left-pad")).read(),
        "empty_pkg": os.path.isdir(os.path.join(root, "node_modules", "empty-pkg")),
    }
