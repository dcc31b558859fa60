"""ZeroGPU on Spaces: answering is a decorated GPU call, fine-tuning stays on the CPU worker."""

import importlib.util

import pytest

from mmdemo.ui import zerogpu


@pytest.mark.parametrize("value, expected", [("true", "cpu"), ("1", "cpu"), ("", None), ("false", None)])
def test_fine_tuning_runs_on_the_cpu_on_zero_gpu(monkeypatch, value, expected):
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert zerogpu.finetune_device() == expected


def test_fine_tuning_device_without_the_variable(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not zerogpu.on_zero_gpu() and zerogpu.finetune_device() is None


@pytest.mark.skipif(importlib.util.find_spec("spaces") is not None, reason="the spaces package is installed here")
def test_without_the_spaces_package_the_handlers_are_left_as_they_are():
    def handler(x):
        return x + 1

    assert zerogpu.gpu()(handler) is handler
