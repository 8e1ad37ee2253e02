import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two threads spin-wait (seen 10-30x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
