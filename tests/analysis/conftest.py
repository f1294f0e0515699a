"""The analysis tests count thousands of tiny ops: run them on one intra-op thread."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Counting runs thousands of tiny ops; on 2 shared cores, 2 intra-op threads spin-wait on
    each other (25 ms per tiny conv instead of 0.1 ms). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
