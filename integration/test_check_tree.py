"""scripts/check-tree, run by scripts/test: a clone holds sources only. A tracked file that
.gitignore ignores, or one over 2 MB, fails the check with its path."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHECK = Path(__file__).resolve().parent.parent / "scripts" / "check-tree"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CHECK), str(repo)], capture_output=True, text=True)


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".envoy/\ntarget/\n")
    (repo / "README.md").write_text("sources only\n")
    git(repo, "add", ".gitignore", "README.md")
    return repo


def test_a_tree_of_sources_passes(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "small.bin").write_bytes(b"\0" * (2 * 1024 * 1024))  # exactly the limit
    git(repo, "add", "small.bin")
    result = check(repo)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_file_over_2_mb_fails_with_its_path_and_size(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "big envoy").write_bytes(b"\0" * (2 * 1024 * 1024 + 1))
    git(repo, "add", "big envoy")
    result = check(repo)
    assert result.returncode == 1
    assert "2097153 big envoy" in result.stderr


def test_an_ignored_file_added_by_force_fails_with_its_path(tmp_path):
    repo = make_repo(tmp_path)
    (repo / ".envoy" / "1.36.2" / "bin").mkdir(parents=True)
    (repo / ".envoy" / "1.36.2" / "bin" / "envoy").write_text("#!/home/someone/python\n")
    git(repo, "add", "-f", ".envoy/1.36.2/bin/envoy")
    result = check(repo)
    assert result.returncode == 1
    assert ".envoy/1.36.2/bin/envoy" in result.stderr
    assert "ignores" in result.stderr


def test_a_staged_file_deleted_from_the_work_tree_still_counts(tmp_path):
    repo = make_repo(tmp_path)
    big = repo / "big.bin"
    big.write_bytes(b"\1" * (3 * 1024 * 1024))
    git(repo, "add", "big.bin")
    big.unlink()
    result = check(repo)
    assert result.returncode == 1
    assert "big.bin" in result.stderr


def test_this_repository_passes():
    result = check(CHECK.parent.parent)
    assert result.returncode == 0, result.stderr
