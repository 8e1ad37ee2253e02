import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    """Tiny models gain little from 2 threads, and on a shared 2-core box (CI beside other jobs) oversubscribed
    torch threads made these tests ~10x slower; run them on one thread and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
