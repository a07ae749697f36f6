"""hardbatch.losses.open_clip.ClipLoss: OpenCLIP's ClipLoss semantics, backed by the tiled loss.

The reference below materialises the logits exactly as OpenCLIP's ClipLoss does (gathered features,
local-rank substitution without gather-with-grad, ``torch.distributed.nn.all_gather`` with it), so each of
the four (local_loss, gather_with_grad) combinations has a different, known gradient that the drop-in must
reproduce on 2 gloo ranks.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn
import torch.multiprocessing as mp
import torch.nn.functional as F

from hardbatch.errors import ConfigError
from hardbatch.losses.open_clip import ClipLoss

LOCAL_B, DIM = 5, 7


def _reference(image, text, scale, local_loss, gather_with_grad, rank, world):
    """OpenCLIP ClipLoss's definition, written from its documented semantics (full logit matrix)."""
    if world > 1:
        if gather_with_grad:
            all_image = torch.cat(torch.distributed.nn.all_gather(image), dim=0)
            all_text = torch.cat(torch.distributed.nn.all_gather(text), dim=0)
        else:
            images = [torch.zeros_like(image) for _ in range(world)]
            texts = [torch.zeros_like(text) for _ in range(world)]
            dist.all_gather(images, image.detach())
            dist.all_gather(texts, text.detach())
            if not local_loss:
                images[rank], texts[rank] = image, text
            all_image, all_text = torch.cat(images), torch.cat(texts)
        if local_loss:
            per_image = scale * image @ all_text.T
            per_text = scale * text @ all_image.T
            labels = torch.arange(image.shape[0]) + rank * image.shape[0]
        else:
            per_image = scale * all_image @ all_text.T
            per_text = per_image.T
            labels = torch.arange(per_image.shape[0])
    else:
        per_image, per_text = scale * image @ text.T, scale * text @ image.T
        labels = torch.arange(image.shape[0])
    return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2


def _features(world: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(world * LOCAL_B, DIM, generator=gen), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(world * LOCAL_B, DIM, generator=gen), dim=-1)
    return image, text


def _run(fn, image, text, scale_value):
    image, text = image.clone().requires_grad_(), text.clone().requires_grad_()
    logit_scale = torch.tensor(scale_value).log().requires_grad_()
    loss = fn(image, text, logit_scale.exp())
    loss.backward()
    return loss.detach(), image.grad, text.grad, logit_scale.grad


def test_single_process_matches_reference_values_and_gradients():
    image, text = _features(1, seed=0)
    got = _run(ClipLoss(tile_size=(2, 3)), image, text, 14.0)
    want = _run(lambda i, t, s: _reference(i, t, s, False, False, 0, 1), image, text, 14.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_output_dict_and_float_scale():
    image, text = _features(1, seed=1)
    out = ClipLoss()(image, text, 10.0, output_dict=True)
    assert list(out) == ["contrastive_loss"]
    torch.testing.assert_close(out["contrastive_loss"], _reference(image, text, 10.0, False, False, 0, 1))


def test_bad_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="horovod"):
        ClipLoss(use_horovod=True)
    with pytest.raises(ConfigError, match="rank"):
        ClipLoss(rank=2, world_size=2)
    with pytest.raises(ConfigError, match="process group"):
        ClipLoss(rank=0, world_size=2)(torch.randn(2, 3), torch.randn(2, 3), 1.0)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip not installed")
def test_matches_open_clip_itself():
    from open_clip.loss import ClipLoss as OpenClipLoss

    image, text = _features(1, seed=2)
    got = _run(ClipLoss(), image, text, 30.0)
    want = _run(OpenClipLoss(), image, text, 30.0)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _worker(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        image, text = _features(world, seed=3)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        for local_loss in (False, True):
            for gather_with_grad in (False, True):
                ours = ClipLoss(local_loss, gather_with_grad, True, rank, world, tile_size=(2, 3))
                got = _run(ours, image[rows], text[rows], 12.0)

                def ref(i, t, s, ll=local_loss, gwg=gather_with_grad):
                    return _reference(i, t, s, ll, gwg, rank, world)

                want = _run(ref, image[rows], text[rows], 12.0)
                case = f"local_loss={local_loss} gather_with_grad={gather_with_grad} rank={rank}"
                for name, g, w in zip(("loss", "d_image", "d_text"), got[:3], want[:3]):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=f"{name} {case}")
                d_scale, want_scale = got[3].clone(), want[3].clone()
                if local_loss and gather_with_grad:
                    # hardbatch averages the shared scale's gradient in backward; OpenCLIP leaves that to DDP.
                    dist.all_reduce(want_scale)
                    want_scale /= world
                torch.testing.assert_close(d_scale, want_scale, rtol=1e-5, atol=1e-6, msg=f"d_scale {case}")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_distributed_semantics_match_open_clip_on_2_ranks(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous")), nprocs=2, join=True)
