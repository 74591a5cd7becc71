import pytest
import torch

from model.device import select_device, select_dtype


def test_auto_device_here_is_cpu_and_cpu_can_be_forced():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and torch.backends.mps.is_available():
        expected = "mps"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


def test_unknown_or_unavailable_device_is_a_clear_error():
    with pytest.raises(ValueError, match="'tpu9' is not a valid torch device"):
        select_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_dtype_auto_and_override():
    cpu = torch.device("cpu")
    assert select_dtype(cpu, "auto") in (torch.bfloat16, torch.float32)
    assert select_dtype(cpu, "fp32") == torch.float32
    assert select_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'float8'"):
        select_dtype(cpu, "float8")
