"""Tokenizer and transformer contracts: shapes, ranges, vocabulary layout, hook sites."""

from collections import Counter

import pytest
import torch
from migbench.backbones.fmnist.transformer import MaskedTransformer, TransformerConfig
from migbench.backbones.fmnist.vq_tokenizer import VQConfig, VQTokenizer
from migbench.backbones.toy import toy

from migbench.api import BLANK_LABEL, NULL_LABEL, HookSet, Tokenizer, VocabLayout, hook_sites


@pytest.fixture(scope="module")
def stack():
    return toy()


def test_tokenizer_shapes_and_ranges(stack) -> None:
    tok = stack.tokenizer
    assert isinstance(tok, Tokenizer)
    images = torch.rand(3, 1, 32, 32)
    ids = tok.encode(images)
    assert ids.shape == (3, 64) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size
    out = tok.decode(ids)
    assert out.shape == (3, 1, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert tok.codebook().shape == (tok.codebook_size, tok.config.code_dim)
    assert tok.grid == (8, 8)


def test_tokenizer_rejects_bad_input(stack) -> None:
    with pytest.raises(ValueError, match="shape"):
        stack.tokenizer.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        stack.tokenizer.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="lie in"):
        stack.tokenizer.decode(torch.full((1, 64), 99))


def test_ema_quantizer_restarts_dead_codes() -> None:
    # decay 0.99 from count 1: an unused code falls to 0.99 < 0.995 after one step and restarts
    tok = VQTokenizer(VQConfig(codebook_size=32, code_dim=4, channels=(8, 8, 8), restart_threshold=0.995))
    tok.train()
    gen = torch.Generator().manual_seed(0)
    before = tok.codebook().clone()
    _, ids, _ = tok.reconstruct(torch.rand(8, 1, 32, 32) * 0.1, gen)
    unused = torch.ones(32, dtype=torch.bool)
    unused[ids.unique()] = False
    assert unused.any()
    assert (tok.quantizer.ema_count >= 0.995).all()  # every dead code was restarted
    assert not torch.allclose(tok.codebook()[unused], before[unused])
    assert torch.allclose(tok.codebook().norm(dim=1), torch.ones(32), atol=1e-5)


def test_vocabulary_layout() -> None:
    layout = TransformerConfig().layout()
    assert (layout.codebook_size, layout.mask_id, layout.class_offset) == (512, 512, 513)
    assert layout.null_class_id == 523 and layout.vocab_size == 524
    assert layout.class_ids(torch.tensor([0, 9, NULL_LABEL])).tolist() == [513, 522, 523]
    shared = TransformerConfig(null_is_mask=True).layout()
    assert shared.null_class_id == shared.mask_id
    assert layout.class_ids(torch.tensor([BLANK_LABEL])).tolist() == [layout.mask_id]
    for bad in (10, BLANK_LABEL - 1):  # checked without a host sync: a RuntimeError on the CPU
        with pytest.raises(RuntimeError, match="labels must lie in"):
            layout.class_ids(torch.tensor([0, bad]))
    with pytest.raises(ValueError):
        VocabLayout(codebook_size=4, mask_id=3, num_classes=2, class_offset=5, null_class_id=7, vocab_size=8)


def test_every_hook_site_called_once_per_forward(stack) -> None:
    backbone = stack.backbone
    calls: Counter[str] = Counter()
    hooks = HookSet()
    for site in hook_sites(backbone.depth):
        hooks.add(site, lambda x, ctx, site=site: (calls.update([site]), x)[1])
    pred = backbone(torch.randint(0, 16, (2, 64)), torch.tensor([0, NULL_LABEL]), hooks)
    assert calls == Counter(hook_sites(backbone.depth))
    assert pred.logits.shape == (2, 64, 16) and pred.last_block.shape == (2, 65, backbone.width)


def test_hooks_change_the_output_and_see_context(stack) -> None:
    backbone = stack.backbone
    ids = torch.randint(0, 16, (2, 64))
    ids[:, :10] = backbone.layout.mask_id
    labels = torch.tensor([1, 2])
    base = backbone(ids, labels).logits
    seen = {}
    hooks = HookSet()

    def add_one(x, ctx):
        seen["masked"] = ctx.masked.sum().item()
        seen["slice"] = ctx.token_slice
        return x + 1.0
    hooks.add("attn_value.1", add_one)
    changed = backbone(ids, labels, hooks).logits
    assert not torch.allclose(base, changed)
    assert seen["masked"] == 20 and seen["slice"] == slice(1, None)


def test_forward_rejects_bad_shapes(stack) -> None:
    with pytest.raises(ValueError, match="ids must have shape"):
        stack.backbone(torch.zeros(2, 10, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        stack.backbone(torch.zeros(2, 64, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_token_embeddings(stack) -> None:
    emb = stack.backbone.token_embeddings()
    assert emb.shape == (16, stack.backbone.width)
    assert isinstance(MaskedTransformer(TransformerConfig(codebook_size=8, width=16, depth=1, heads=2)),
                      torch.nn.Module)


def test_validation_masks_of_a_prefix_do_not_depend_on_the_rows_after_it() -> None:
    from migbench.masking import VALIDATION_BATCH, validation_masks

    full = torch.cat([m for _, m in validation_masks(2 * VALIDATION_BATCH, 8, "cosine", 0.0)])
    part = list(validation_masks(VALIDATION_BATCH + 7, 8, "cosine", 0.0))
    assert [rows for rows, _ in part] == [slice(0, VALIDATION_BATCH), slice(VALIDATION_BATCH, VALIDATION_BATCH + 7)]
    assert torch.equal(torch.cat([m for _, m in part]), full[:VALIDATION_BATCH + 7])
    assert full.shape == (2 * VALIDATION_BATCH, 8) and full.any() and not full.all()
