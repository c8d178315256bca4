"""Exit statuses of the command-line front ends (pengwin-demo and pengwin-watcher share them)."""

import pytest

from pengwin_demo.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, InputError, ModelError, exit_status


def _raise(err: BaseException):
    def action():
        raise err
    return action


@pytest.mark.parametrize("err", [InputError("ct.nii.gz: file not found"), ModelError("abbc: model missing")])
def test_user_errors_are_one_line_and_status_2(err, capsys):
    assert exit_status(_raise(err)) == EXIT_USER_ERROR == 2
    assert capsys.readouterr().err == f"error: {err}\n"


def test_ctrl_c_is_status_130(capsys):
    assert exit_status(_raise(KeyboardInterrupt())) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_success_and_explicit_statuses_pass_through():
    assert exit_status(lambda: None) == 0
    assert exit_status(lambda: 3) == 3


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        exit_status(lambda: 1 / 0)
