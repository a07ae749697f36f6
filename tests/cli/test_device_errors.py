"""``resolve_device``: user mistakes are ConfigErrors naming the option, a wrong type is a TypeError."""

from __future__ import annotations

import pytest
import torch

from hardbatch.device import resolve_device
from hardbatch.errors import ConfigError


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda:0")])
def test_cuda_without_cuda_is_a_config_error(device):
    with pytest.raises(ConfigError, match=r"no CUDA support|no CUDA GPU is visible"):
        resolve_device(device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_beyond_the_visible_devices():
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_not_a_device_and_wrong_type():
    with pytest.raises(ConfigError, match="'gpu': not a device"):
        resolve_device("gpu")
    with pytest.raises(TypeError, match=r"str or torch\.device"):
        resolve_device(0)  # type: ignore[arg-type]
