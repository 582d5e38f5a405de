import pytest
import torch

from ltdistill.errors import ConfigError
from ltdistill.nets import create_net, init_net, list_nets


@pytest.mark.parametrize("name", list_nets())
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape(name, channels):
    net = create_net(name, channels, 7, 32)
    net.eval()
    out = net(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert net.embed(torch.randn(2, channels, 32, 32)).shape == (2, net.feature_dim)


def test_convnet_depth_follows_image_size():
    assert create_net("convnet", 3, 10, 32).feature_dim == 128 * 4 * 4
    assert len([m for m in create_net("convnet", 3, 10, 64).features if isinstance(m, torch.nn.Conv2d)]) == 4
    assert create_net("convnet", 1, 10, 8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_convnet_uses_instance_norm_by_default():
    net = create_net("convnet", 3, 10, 32)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 3 and all(n.num_groups == n.num_channels == 128 for n in norms)


def test_init_net_is_seeded_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b = init_net("convnet", 3, 10, 32, seed=5), init_net("convnet", 3, 10, 32, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_net():
    with pytest.raises(ConfigError, match="unknown net 'lenet'"):
        create_net("lenet", 3, 10)


def test_too_small_images_are_refused():
    with pytest.raises(ConfigError, match="at least 32px"):
        create_net("vgg11", 1, 10, 8)
