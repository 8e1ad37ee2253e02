import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Small models on a shared 2-core box: oversubscribed torch threads made these tests ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
