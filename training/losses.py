"""Training losses: perceptual (LPIPS / ST-LPIPS), PatchGAN hinge with adaptive weight, KL, soft histograms.

Everything here is plain torch. The autoencoder objective follows taming-transformers / LDM
(``LPIPSWithDiscriminator``): reconstruction (L1) + perceptual + KL + a PatchGAN hinge loss whose
weight is set adaptively from the gradients at the decoder's last layer, switched on at a start step;
plus a histogram-divergence term between the per-band histograms of output and input.

Perceptual networks never download anything: each choice names where its weights come from
(see :func:`build_perceptual`).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "PERCEPTUAL_NETS",
    "PerceptualLoss",
    "NLayerDiscriminator",
    "adaptive_weight",
    "build_perceptual",
    "hinge_d_loss",
    "hinge_g_loss",
    "histogram_loss",
    "kl_loss",
    "soft_histogram",
]

#: the perceptual networks of the autoencoder loss -> where their weights come from
PERCEPTUAL_NETS = {
    "stlpips-alex": "ST-LPIPS AlexNet (shift-tolerant; trunk + linear weights shipped in stlpips-pytorch)",
    "stlpips-vgg": "ST-LPIPS VGG16 (shift-tolerant; trunk + linear weights shipped in stlpips-pytorch)",
    "lpips-alex": "LPIPS v0.1 AlexNet (ImageNet trunk from the local torch hub cache, linear weights from lpips)",
    "lpips-vgg": "LPIPS v0.1 VGG16 (ImageNet trunk from the local torch hub cache, linear weights from lpips)",
    "lpips-rand": "LPIPS v0.1 AlexNet with a RANDOM trunk (pnet_rand=True) and the lpips linear weights",
    "none": "no perceptual loss",
}


# --------------------------------------------------------------------------- perceptual


class PerceptualLoss(nn.Module):
    """LPIPS-type distance between two 4-band reflectance images (B, 4, H, W) -> (B,).

    RGB (bands 0, 1, 2 = B04, B03, B02) is scaled to [-1, 1] with ``2 * x / reflectance_max - 1``;
    with ``nir=True`` the NIR band (3) is compared as a grey triplet too and the two distances averaged.
    The network is frozen (no gradients to its weights), in eval mode.
    """

    def __init__(self, net: nn.Module, name: str, reflectance_max: float = 0.4, nir: bool = True) -> None:
        super().__init__()
        self.net = net.eval()
        self.name = name
        self.reflectance_max = float(reflectance_max)
        self.nir = nir
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:  # the network stays in eval mode (no dropout)
        super().train(mode)
        self.net.eval()
        return self

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x / self.reflectance_max - 1.0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self._scale(x.float()), self._scale(y.float())
        d = self.net(x[:, :3], y[:, :3]).flatten(1).mean(1)
        if self.nir and x.shape[1] > 3:
            d = 0.5 * (d + self.net(x[:, 3:4].expand(-1, 3, -1, -1), y[:, 3:4].expand(-1, 3, -1, -1)).flatten(1).mean(1))
        return d


def build_perceptual(name: str, *, reflectance_max: float = 0.4, nir: bool = True) -> PerceptualLoss | None:
    """The perceptual network called ``name`` (one of :data:`PERCEPTUAL_NETS`); None for "none".

    No choice ever downloads. "lpips-*" and "stlpips-*" are the networks of
    :func:`xr_opensr.metrics.lpips` (the ImageNet trunk of "lpips-alex"/"lpips-vgg" must be in the
    local torch hub cache, else FileNotFoundError; ST-LPIPS weights ship inside stlpips-pytorch);
    "lpips-rand" is LPIPS with a random AlexNet trunk (``pnet_rand=True``) and its linear layers.
    """
    if name not in PERCEPTUAL_NETS:
        raise ValueError(f"unknown perceptual net {name!r}; choose one of {sorted(PERCEPTUAL_NETS)}")
    if name == "none":
        return None
    if name == "lpips-rand":
        import lpips

        with warnings.catch_warnings():  # torchvision's deprecation notes about `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
    else:
        from xr_opensr.metrics import lpips_network

        try:  # a network of its own: the training moves it to its device, the metrics' cached one stays put
            net = lpips_network(name, "cpu")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (or set autoencoder.perceptual_net to 'stlpips-alex')") from None
    return PerceptualLoss(net, name, reflectance_max=reflectance_max, nir=nir)


# --------------------------------------------------------------------------- adversarial


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / taming-transformers): (B, C, H, W) -> logits (B, 1, h, w)."""

    def __init__(self, in_channels: int = 4, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: (mean relu(1 - D(x)) + mean relu(1 + D(G(z)))) / 2."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: -mean D(G(z))."""
    return -logits_fake.mean()


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """LDM/taming adaptive GAN weight: ||grad_last nll|| / (||grad_last g_loss|| + 1e-4), clamped, detached.

    ``last_layer`` is the weight of the decoder's last convolution.
    """
    nll_grads = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(weight, 0.0, max_weight).detach()


# --------------------------------------------------------------------------- KL


def kl_loss(posterior, image_numel: int) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over the latent, averaged over the batch, divided by the image's
    element count: with per-pixel mean reconstruction losses, a weight of 1e-6 then balances the
    terms as LDM's ``kl_weight=1e-6`` does with its per-image summed losses."""
    return posterior.kl().mean() / image_numel


# --------------------------------------------------------------------------- histograms


def soft_histogram(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bins: int = 64, bandwidth: float = 1.0,
    max_pixels: int = 4096,
) -> torch.Tensor:
    """Differentiable per-band histogram by Gaussian-kernel soft binning.

    Parameters
    ----------
    x : (B, C, H, W) values.
    lo, hi : (B, C) range of the bins per image and band (bin centres span it evenly).
    bins : number of bins.
    bandwidth : kernel standard deviation in bin widths.
    max_pixels : at most this many pixels per band enter (a fixed, evenly strided subset).

    Returns
    -------
    (B, C, bins), each histogram sums to 1.
    """
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    stride = max(1, flat.shape[-1] // max_pixels)
    flat = flat[..., ::stride]
    width = ((hi - lo) / bins).clamp_min(1e-6)  # (B, C)
    centres = lo[..., None] + width[..., None] * (torch.arange(bins, device=x.device, dtype=x.dtype) + 0.5)
    # (B, C, N, 1) - (B, C, 1, bins), in bin widths
    d = (flat[..., None] - centres[..., None, :]) / (bandwidth * width[..., None, None])
    weights = torch.exp(-0.5 * d * d).sum(dim=2)  # (B, C, bins)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def histogram_loss(
    output: torch.Tensor, target: torch.Tensor, bins: int = 64, bandwidth: float = 1.0,
    divergence: str = "wasserstein", max_pixels: int = 4096,
) -> torch.Tensor:
    """Divergence between the per-band soft histograms of ``output`` and ``target`` (B, C, H, W) -> scalar.

    The bins span the target's [min, max] per image and band (padded by 10 %), so the term is
    independent of the data's scale. ``divergence``: "wasserstein" (1-D Wasserstein-1 distance
    between the binned distributions, in units of the bin range: the mean |CDF_out - CDF_target|)
    or "symmetric_kl" (0.5 KL(p||q) + 0.5 KL(q||p), with 1e-6 added to every bin).
    """
    with torch.no_grad():
        t = target.flatten(2)
        lo, hi = t.amin(-1), t.amax(-1)
        pad = 0.1 * (hi - lo).clamp_min(1e-3)
        lo, hi = lo - pad, hi + pad
    p = soft_histogram(output, lo, hi, bins, bandwidth, max_pixels)
    q = soft_histogram(target, lo, hi, bins, bandwidth, max_pixels)
    if divergence == "wasserstein":
        return (p.cumsum(-1) - q.cumsum(-1)).abs().mean()
    if divergence == "symmetric_kl":
        p, q = p + 1e-6, q + 1e-6
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
        kl_pq = (p * (p.log() - q.log())).sum(-1)
        kl_qp = (q * (q.log() - p.log())).sum(-1)
        return 0.5 * (kl_pq + kl_qp).mean()
    raise ValueError(f"unknown histogram divergence {divergence!r}; use 'wasserstein' or 'symmetric_kl'")
