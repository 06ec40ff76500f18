"""`cfd3d serve` on the command line: bad input is one line and exit code 2."""

from __future__ import annotations

import socket
import sys

import pytest

from cfd3d.cli import main
from cfd3d.serve.command import host_warning, is_loopback


def one_line_exit_2(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_loopback_hosts_need_no_warning():
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_loopback(host) and host_warning(host, 7860) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.org"):
        assert not is_loopback(host)
        warning = host_warning(host, 7860)
        assert warning is not None and host in warning and "network" in warning


def test_a_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = one_line_exit_2(["serve", "--port", str(port), "--out", str(tmp_path)], capsys)
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--overrides", "{not json"], "--overrides is not valid JSON"),
        (["--overrides", "[1, 2]"], "must be a JSON object"),
        (["--overrides", '{"no_such_field": 1}'], "no_such_field"),
        (["--port", "70000"], "--port must be 1 to 65535"),
        (["--preview-every", "0"], "--preview-every must be at least 1"),
        (["--device", "tpu"], "tpu"),
    ],
)
def test_bad_options_are_one_line(args, words, tmp_path, capsys):
    err = one_line_exit_2(["serve", "--out", str(tmp_path), *args], capsys)
    assert words in err


def test_without_gradio_the_extra_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    monkeypatch.delitem(sys.modules, "cfd3d.serve.app", raising=False)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    err = one_line_exit_2(["serve", "--port", str(port), "--out", str(tmp_path)], capsys)
    assert "pip install 'cfd3d[ui]'" in err
