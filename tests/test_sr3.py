"""SR3's conditional UNet started from a prior with fewer channels (idm_med.sr3)."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from idm_med import prior
from idm_med.sr3 import SR3Config, make_sr3_unet

TINY = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)


def test_two_channel_sr3_from_a_one_channel_prior_is_the_prior_on_each_part(tmp_path):
    """conv_in takes the prior's filters halved on (real, imaginary), the condition starts
    at zero, conv_out is copied per part: with equal parts and any condition, every output
    channel is the prior's noise estimate of that part."""
    torch.manual_seed(0)
    unet = UNet2DModel(**prior.prior_unet_config(1, **TINY)).eval()
    prior.save_prior(unet, tmp_path / "prior", {"kind": "prior"})
    cfg = SR3Config(image_size=16, image_channels=2, init=str(tmp_path / "prior"), unet=TINY)
    sr3 = make_sr3_unet(cfg).eval()
    assert tuple(sr3.conv_in.weight.shape[:2]) == (8, 4)
    assert float(sr3.conv_in.weight[:, 2:].abs().max()) == 0.0
    x = torch.rand(2, 1, 16, 16)
    t = torch.full((2,), 30)
    with torch.no_grad():
        out = sr3(torch.cat([x, x, torch.rand(2, 2, 16, 16)], 1), t).sample
        ref = unet(x, t).sample
    assert out.shape == (2, 2, 16, 16)
    torch.testing.assert_close(out[:, :1], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 1:], ref, rtol=1e-4, atol=1e-5)
