"""The run folder's lock (run_folder.py) in one process: exclusive even within a process, and an
unwritable place is one error (e2e/test_run_folder_owner.py races two trainings)."""

import pytest

from paddlegan_lite import run_folder
from paddlegan_lite.errors import UserError


def test_claim_is_exclusive_within_a_process_too(tmp_path):
    first = run_folder.claim(tmp_path / "run")
    try:
        with pytest.raises(UserError, match=r"in use by another training \(pid \d+ on "):
            run_folder.claim(tmp_path / "run")
    finally:
        first.release()
    run_folder.claim(tmp_path / "run").release()  # released: free again


def test_claim_of_an_unwritable_place_is_one_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot write the run folder"):
        run_folder.claim(blocker / "run")
