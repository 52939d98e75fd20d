"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Test tensors are tiny: one intra-op thread is faster and cannot oversubscribe a small
    or busy machine (2 threads were measured 5-50x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
