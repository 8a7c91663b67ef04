"""What each family's own modules do: the VQ tokenizer, the vocabulary layout, the masking
helpers, and ``toy1d``'s checkpoint-like layout (the contract every family keeps is in
tests/test_contract.py)."""

import pytest
import torch
from migbench.backbones.fmnist.transformer import TransformerConfig
from migbench.backbones.fmnist.vq_tokenizer import VQConfig, VQTokenizer
from migbench.backbones.toy import toy
from migbench.backbones.toy1d import toy1d

from migbench.api import BLANK_LABEL, NULL_LABEL, HookSet, Tokenizer, VocabLayout


@pytest.fixture(scope="module")
def stack():
    return toy()


def test_vq_tokenizer_grid_and_codebook(stack) -> None:
    """(Shapes and ranges of every family's tokenizer: tests/test_contract.py.)"""
    tok = stack.tokenizer
    assert isinstance(tok, Tokenizer)
    assert tok.codebook().shape == (tok.codebook_size, tok.config.code_dim)
    assert tok.grid == tok.token_shape == (8, 8)


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


def test_validation_masks_of_a_prefix_do_not_depend_on_the_rows_after_it() -> None:
    from migbench.masking import VALIDATION_BATCH, validation_masks

    full = torch.cat([m for _, m in validation_masks(2 * VALIDATION_BATCH, 8, "cosine", 0.0)])
    part = list(validation_masks(VALIDATION_BATCH + 7, 8, "cosine", 0.0))
    assert [rows for rows, _ in part] == [slice(0, VALIDATION_BATCH), slice(VALIDATION_BATCH, VALIDATION_BATCH + 7)]
    assert torch.equal(torch.cat([m for _, m in part]), full[:VALIDATION_BATCH + 7])
    assert full.shape == (2 * VALIDATION_BATCH, 8) and full.any() and not full.all()


def test_toy1d_is_laid_out_like_the_public_checkpoints() -> None:
    """Class token last, a head tied to the input embeddings (``LN(h) @ E^T + bias`` over the
    whole vocabulary, sliced to K), BERT-named attention, 16 1-D tokens of a 32x32 grey image."""
    stack = toy1d()
    backbone, layout = stack.backbone, stack.backbone.layout
    assert layout.class_position == "last" and (layout.codebook_size, backbone.seq_len) == (16, 16)
    assert stack.tokenizer.token_shape == (16,) and stack.tokenizer.image_shape == (1, 32, 32)
    assert backbone.head.embeddings is backbone.word_embeddings
    assert backbone.value_projection(1)[0] is backbone.layers[1].attention.value.weight
    ids = torch.randint(0, 16, (2, 16))
    seen = {}
    hooks = HookSet()
    hooks.add("final_hidden", lambda x, ctx: seen.update(hidden=x) or x)
    with torch.no_grad():
        logits = backbone(ids, torch.tensor([3, BLANK_LABEL]), hooks).logits
        head = backbone.head
        full = head.norm(seen["hidden"][:, :16]) @ backbone.word_embeddings.weight.t() + head.bias
    assert full.shape == (2, 16, layout.vocab_size)
    torch.testing.assert_close(logits, full[..., :16])


def test_toy1d_same_seed_same_weights_and_the_global_generator_untouched() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, other = toy1d(), toy1d(), toy1d(seed=1)
    assert torch.equal(torch.rand(1), before)
    for module in ("backbone", "tokenizer"):
        pairs = zip(getattr(a, module).state_dict().values(), getattr(b, module).state_dict().values(), strict=True)
        assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.backbone.token_embeddings(), other.backbone.token_embeddings())


def test_toy1d_tokenizer_rejects_bad_input() -> None:
    tokenizer = toy1d().tokenizer
    with pytest.raises(ValueError, match="shape"):
        tokenizer.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        tokenizer.encode(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="lie in"):
        tokenizer.decode(torch.full((1, 16), 16))
