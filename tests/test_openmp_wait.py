"""Inference commands let OpenMP's threads sleep at a barrier, set before torch loads, and leave training alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from emnist_lit.openmp_wait import prefer_passive_wait

# Runs `python -m emnist_lit COMMAND` up to the moment torch is first imported, and prints OMP_WAIT_POLICY then:
# OpenMP reads the variable once, when torch loads it, so a later setting would do nothing.
PROBE = """
import os, runpy, sys

class TorchLoading(Exception):
    pass

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise TorchLoading(os.environ.get("OMP_WAIT_POLICY", "unset"))
        return None

sys.meta_path.insert(0, Probe())
sys.argv = ["emnist_lit", sys.argv[1], "--help"]
try:
    runpy.run_module("emnist_lit", run_name="__main__")
except TorchLoading as loading:
    print("policy when torch loaded:", loading, file=sys.stderr)
"""


def policy_when_torch_loads(command: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, command], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    return result.stderr.rsplit("policy when torch loaded:", 1)[1].strip()


@pytest.mark.parametrize(("command", "expected"), [("predict", "PASSIVE"), ("read", "PASSIVE"), ("fit", "unset")])
def test_the_wait_policy_is_in_place_before_torch_loads(command, expected, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert policy_when_torch_loads(command, dict(os.environ)) == expected


def test_passive_wait_for_inference_commands_only_and_never_over_the_users_choice():
    environ: dict[str, str] = {}
    prefer_passive_wait(["--verbose", "predict", "--ckpt_path", "x.ckpt"], environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    for argv in (["fit", "--config", "configs/fast_vin.yaml"], ["--help"], []):
        environ = {}
        prefer_passive_wait(argv, environ)
        assert environ == {}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    prefer_passive_wait(["serve"], environ)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}
