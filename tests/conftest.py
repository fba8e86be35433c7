import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a missing weight file must fail fast, never reach for a hub

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
