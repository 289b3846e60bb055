"""Code version (what 'dirty' means) and the provenance record every result carries."""

import re
import subprocess

import pytest
import torch

from ddlib import provenance


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def head(root, what="HEAD"):
    return subprocess.run(["git", "rev-parse", "--short=10", what], cwd=root, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def book(tmp_path):
    """A workbook-shaped git repository: source (ddlib/, params.yaml) and outputs (reports/, dvc.lock)."""
    (tmp_path / "ddlib").mkdir()
    (tmp_path / "ddlib" / "dm.py").write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    (tmp_path / "README.md").write_text("docs\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "source")
    return tmp_path


def test_clean_source_is_its_commit(book):
    assert provenance.code_version(book) == head(book)


def test_outputs_and_docs_never_make_the_code_dirty_nor_change_its_version(book):
    source_commit = head(book)
    (book / "reports").mkdir()
    (book / "reports" / "fashion_mnist.md").write_text("table\n")
    (book / "dvc.lock").write_text("stages: {}\n")
    (book / "README.md").write_text("docs, edited\n")
    assert provenance.code_version(book) == source_commit        # uncommitted outputs: still clean
    git(book, "add", ".")
    git(book, "commit", "-q", "-m", "results")
    assert head(book) != source_commit
    assert provenance.code_version(book) == source_commit        # the results commit is not a code version


def test_uncommitted_source_is_dirty_with_a_hash_of_the_diff(book):
    base = head(book)
    (book / "ddlib" / "dm.py").write_text("x = 2\n")
    first = provenance.code_version(book)
    assert first.startswith(f"{base}+dirty.") and len(first.split(".")[-1]) == 12
    assert provenance.code_version(book) == first                # the same edit, the same hash
    (book / "ddlib" / "dm.py").write_text("x = 3\n")
    assert provenance.code_version(book) != first                # another edit, another hash
    (book / "ddlib" / "dm.py").write_text("x = 1\n")
    assert provenance.code_version(book) == base                 # undone: clean again


def test_new_untracked_source_file_and_params_count(book):
    base = head(book)
    (book / "ddlib" / "new_method.py").write_text("y = 1\n")
    with_file = provenance.code_version(book)
    assert with_file.startswith(f"{base}+dirty.")
    (book / "ddlib" / "new_method.py").unlink()
    (book / "params.yaml").write_text("seed: 1\n")
    with_params = provenance.code_version(book)
    assert with_params.startswith(f"{base}+dirty.") and with_params != with_file


def test_outside_git_and_before_the_first_commit(tmp_path):
    assert provenance.code_version(tmp_path) == "unknown"
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert provenance.code_version(tmp_path).startswith("uncommitted+dirty.")


def test_record_names_what_decides_the_numbers():
    rec = provenance.record(torch.device("cpu"))
    assert rec["threads"] == torch.get_num_threads() and rec["cpu_capability"]
    assert rec["bit_reproducible"] is True and rec["torch"] == torch.__version__
    assert re.fullmatch(r"([0-9a-f]{10}|uncommitted)(\+dirty\.[0-9a-f]{12})?|unknown", rec["code_version"])
