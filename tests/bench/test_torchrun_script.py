"""The torchrun baseline trains the same network as the MNIST example."""

from __future__ import annotations

import torch

from bench.torchrun_script import Net as ScriptNet
from tinyexp_core.examples.mnist_exp import Net as ExampleNet


def test_the_script_copies_the_example_network_exactly() -> None:
    torch.manual_seed(0)
    ours = ExampleNet(10, 1)
    torch.manual_seed(0)
    theirs = ScriptNet(10, 1)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    for name, tensor in ours_state.items():
        assert torch.equal(tensor, theirs_state[name]), name
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(ours(x), theirs(x))
