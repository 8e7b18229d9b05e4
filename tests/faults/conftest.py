import pytest, torch


@pytest.fixture(autouse=True)
def one_thread():
    "Fault cases run tiny models: one torch thread each, the caller's count restored after (other tests compare runs)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
