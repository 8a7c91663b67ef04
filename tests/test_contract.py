"""The stack contract on every registered family (``migbench.registry.BACKBONES``).

Backbone: every hook site fires once per forward with the documented shapes; identity hooks and
a deep copy of the head change nothing (and a changed head is really applied); the class slot
is where the layout says; BLANK_LABEL shows ``layout.blank_id``; ``token_embeddings()`` and
``value_projection(i)`` are what the forward uses. Tokenizer: shapes and ranges. Methods: every
neutral config is the base sampler bit for bit; KA-MIG's zero-initialised fusion reproduces the
backbone; self-guidance at s = 0 adds nothing; samples do not depend on the number of processes;
Halton runs exactly where the stack has a 2-D grid and is refused elsewhere by name, from
``build_sampler`` and from a suite before any sampling; KA-MIG (G_co on sequence neighbours)
runs on 1-D tokens too.

A family whose stack names trained methods' weights (``fmnist``) samples with them; the others
with random trained parts (``random_trained_parts`` in conftest.py).
"""

from __future__ import annotations

import copy
from collections import Counter
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from migbench.benchmarks.suite import SuiteError, bind, parse_suite
from migbench.benchmarks.sweep import validate
from migbench.methods.ka_mig.fusion import KAMIGModule, Switches
from migbench.methods.ka_mig.graphs import normalise
from PIL import Image

from migbench import registry
from migbench.api import BLANK_LABEL, NULL_LABEL, HookSet, Stack, hook_sites
from migbench.generate import Generation, generate, merge
from migbench.images import save_grid
from migbench.recipe import build_sampler, resolve

# public-checkpoint stacks at full size run the contract on seeded random weights, marked slow
FULL_SIZE = tuple(name for name in registry.BACKBONES if registry.has_random_weights(name))
FAMILIES = [pytest.param(name, marks=pytest.mark.slow if name in FULL_SIZE else ()) for name in registry.BACKBONES]
TINY = ("toy", "toy1d", "valeoai_tiny", "autonat_tiny", "openmuse_tiny", "titok_tiny")  # random families that sample in a second; the others' sampling tests are slow
SAMPLING = [pytest.param(name, marks=() if name in TINY else pytest.mark.slow) for name in registry.BACKBONES]
OPTIONAL = [m for m in registry.METHODS if m != "maskgit"]
GRID_METHODS = ("halton",)  # need a 2-D token grid


@cache
def load(name: str) -> Stack:
    return registry.stack(name, random_weights=name in FULL_SIZE)


@pytest.fixture(params=FAMILIES)
def stack(request) -> Stack:
    return load(request.param)


@pytest.fixture
def sampling_stack(stack: Stack, random_trained_parts) -> Stack:
    """``stack`` with weights for every trained method: its own where it names them, else random parts."""
    return stack if stack.method_weights else random_trained_parts(stack)


def inputs(stack: Stack, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (3, N) with every third position masked, labels (3,): a class, the null label, the last class."""
    layout = stack.backbone.layout
    ids = torch.randint(0, layout.codebook_size, (3, stack.backbone.seq_len), generator=torch.Generator().manual_seed(seed))
    ids[:, ::3] = layout.mask_id
    return ids, torch.tensor([0, NULL_LABEL, layout.num_classes - 1])


@torch.no_grad()
def forward(stack: Stack, ids: torch.Tensor, labels: torch.Tensor, hooks: HookSet | None = None):
    return stack.backbone(ids, labels, hooks)


@torch.no_grad()
def embedded(stack: Stack, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """What site ``embed`` sees (B, L, d), and the forward's ``token_slice``."""
    seen = {}
    hooks = HookSet()
    hooks.add("embed", lambda x, ctx: seen.update(x=x, token_slice=ctx.token_slice) or x)
    stack.backbone(ids, labels, hooks)
    return seen["x"], seen["token_slice"]


def sequence_length(stack: Stack) -> int:
    return stack.backbone.seq_len + (stack.backbone.layout.class_position != "none")


# --- tokenizer and backbone -------------------------------------------------------------------

def test_tokenizer_shapes_and_ranges(stack: Stack) -> None:
    tokenizer = stack.tokenizer
    images = torch.rand(3, *tokenizer.image_shape, generator=torch.Generator().manual_seed(0))
    ids = tokenizer.encode(images)
    assert ids.shape == (3, stack.backbone.seq_len) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < tokenizer.codebook_size == stack.backbone.layout.codebook_size
    out = tokenizer.decode(ids)
    assert out.shape == (3, *tokenizer.image_shape) and out.min() >= 0 and out.max() <= 1


def test_every_hook_site_fires_once_per_forward(stack: Stack) -> None:
    backbone = stack.backbone
    calls: Counter[str] = Counter()
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = HookSet()
    for site in hook_sites(backbone.depth):
        hooks.add(site, lambda x, ctx, site=site: (calls.update([site]), shapes.update({site: tuple(x.shape)}), x)[2])
    ids, labels = inputs(stack)
    pred = forward(stack, ids, labels, hooks)
    assert calls == Counter(hook_sites(backbone.depth))
    hidden, logits = (3, sequence_length(stack), backbone.width), (3, backbone.seq_len, backbone.layout.codebook_size)
    assert shapes == {site: logits if site == "logits" else hidden for site in hook_sites(backbone.depth)}
    assert pred.logits.shape == logits and pred.last_block.shape == hidden


def test_forward_rejects_bad_shapes(stack: Stack) -> None:
    n = stack.backbone.seq_len
    with pytest.raises(ValueError, match="ids"):
        stack.backbone(torch.zeros(2, n + 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        stack.backbone(torch.zeros(2, n, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_identity_hooks_change_nothing(stack: Stack) -> None:
    ids, labels = inputs(stack)
    base = forward(stack, ids, labels)
    hooks = HookSet()
    for site in hook_sites(stack.backbone.depth):
        hooks.add(site, lambda x, ctx: x)
    hooked = forward(stack, ids, labels, hooks)
    assert torch.equal(hooked.logits, base.logits) and torch.equal(hooked.last_block, base.last_block)


def test_a_deep_copy_of_the_head_changes_nothing_and_a_changed_one_is_applied(stack: Stack) -> None:
    """KA-MIG copies the whole head (upstream: ``mlm_layer``, a tied one included)."""
    ids, labels = inputs(stack)
    head = copy.deepcopy(stack.backbone.head)
    assert not {p.data_ptr() for p in head.parameters()} & {p.data_ptr() for p in stack.backbone.parameters()}
    hooks = HookSet()
    hooks.replace_head(head, "copy")
    assert torch.equal(forward(stack, ids, labels, hooks).logits, forward(stack, ids, labels).logits)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(0.1)
    assert not torch.equal(forward(stack, ids, labels, hooks).logits, forward(stack, ids, labels).logits)


def test_the_class_slot_is_where_the_layout_says_and_hooks_see_the_context(stack: Stack) -> None:
    """A label changes the embedded sequence only at the class slot, the one position outside
    ``token_slice``; a hook sees the masked positions and changes the output."""
    layout, n, length = stack.backbone.layout, stack.backbone.seq_len, sequence_length(stack)
    ids, _ = inputs(stack)
    first, token_slice = embedded(stack, ids, torch.tensor([0, 1, 2]))
    other, _ = embedded(stack, ids, torch.tensor([1, NULL_LABEL, 0]))
    slot = 0 if layout.class_position == "first" else length - 1
    assert (first != other).any(-1).any(0).nonzero().flatten().tolist() == [slot]
    assert len(range(length)[token_slice]) == n and slot not in range(length)[token_slice]
    seen = {}
    hooks = HookSet()
    hooks.add(f"attn_value.{stack.backbone.depth - 1}", lambda v, ctx: seen.update(masked=int(ctx.masked.sum())) or v + 1.0)
    _, labels = inputs(stack)
    assert not torch.equal(forward(stack, ids, labels, hooks).logits, forward(stack, ids, labels).logits)
    assert seen["masked"] == int((ids == layout.mask_id).sum())


def test_blank_label_shows_the_blank_id(stack: Stack) -> None:
    """BLANK_LABEL puts ``layout.blank_id`` in the class slot: the null class's pass exactly where
    that is the null class (eMIGM's CFG with mask), another pass elsewhere."""
    layout = stack.backbone.layout
    assert layout.class_ids(torch.tensor([BLANK_LABEL])).tolist() == [layout.blank_id]
    ids, _ = inputs(stack)
    blank = forward(stack, ids, torch.full((3,), BLANK_LABEL)).logits
    null = forward(stack, ids, torch.full((3,), NULL_LABEL)).logits
    assert torch.equal(blank, null) == (layout.blank_id == layout.null_class_id)
    assert not torch.equal(blank, forward(stack, ids, torch.zeros(3, dtype=torch.long)).logits)


def test_token_embeddings_are_what_the_codes_embed_to(stack: Stack) -> None:
    """Changing one image token from code a to code b changes the embedded sequence only at its
    position, by ``token_embeddings()[a] - token_embeddings()[b]``."""
    embeddings = stack.backbone.token_embeddings()
    assert embeddings.shape == (stack.backbone.layout.codebook_size, stack.backbone.width)
    ids, labels = inputs(stack)
    position, (a, b) = 4, (2, 5)
    ids_a, ids_b = ids.clone(), ids.clone()
    ids_a[:, position], ids_b[:, position] = a, b
    (xa, token_slice), (xb, _) = embedded(stack, ids_a, labels), embedded(stack, ids_b, labels)
    row = range(sequence_length(stack))[token_slice][position]
    assert (xa != xb).any(-1).any(0).nonzero().flatten().tolist() == [row]
    torch.testing.assert_close(xa[:, row] - xb[:, row], (embeddings[a] - embeddings[b]).expand(3, -1))


def test_value_projection_is_the_value_map_the_forward_uses(stack: Stack) -> None:
    """``value_projection(i)`` returns the live weight W (d, d) and bias b: adding the identity
    to W makes site ``attn_value.i`` see v + u, which recovers the block's normalised input u,
    and then v = W u + b (self-guidance adds W td at that site)."""
    backbone = stack.backbone
    ids, labels = inputs(stack)
    for index in range(backbone.depth):
        weight, bias = backbone.value_projection(index)
        assert weight.shape == (backbone.width, backbone.width) and (bias is None or bias.shape == (backbone.width,))
        seen = []
        hooks = HookSet()
        hooks.add(f"attn_value.{index}", lambda v, ctx, seen=seen: seen.append(v) or v)
        forward(stack, ids, labels, hooks)
        saved = weight.detach().clone()
        with torch.no_grad():
            weight.add_(torch.eye(backbone.width))
        try:
            forward(stack, ids, labels, hooks)
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        value, shifted = seen
        torch.testing.assert_close(value, F.linear(shifted - value, weight, bias), rtol=1e-4, atol=1e-5)
    assert torch.equal(forward(stack, ids, labels).logits, forward(stack, ids, labels).logits)


def test_ka_mig_zero_initialised_fusion_reproduces_the_backbone(stack: Stack) -> None:
    """A fresh KA-MIG module (zero projections, a copy of the head, random sparse graphs), folded
    and online, gives the backbone's own logits bit for bit."""
    backbone, layout = stack.backbone, stack.backbone.layout
    k, gen = layout.codebook_size, torch.Generator().manual_seed(0)
    graphs = [normalise(torch.rand(k, k, generator=gen) * (torch.rand(k, k, generator=gen) < 8 / k))
              for _ in range(2)]  # about 8 random edges per code
    incompatible = torch.rand(layout.num_classes, backbone.seq_len, k, generator=gen) > 0.5
    module = KAMIGModule(backbone.width, backbone.depth, backbone.head, *graphs, incompatible).eval()
    assert module.head is not backbone.head
    folded = module.fold(Switches(), backbone.token_embeddings(), torch.device("cpu"))
    online = module.hooks(Switches(), lambda ctx: module.constants(ctx.backbone.token_embeddings()))
    ids, labels = inputs(stack)
    base = forward(stack, ids, labels).logits
    for hooks in (folded, online):
        assert torch.equal(forward(stack, ids, labels, module.hook_set(hooks)).logits, base)


# --- methods on the stack ---------------------------------------------------------------------

def sample(stack: Stack, methods: str | list[str], overrides: dict | None = None, n: int = 10, seed: int = 0,
           neutral: tuple[str, ...] = (), **kw) -> Generation:
    """``n`` samples in batches of 4 (the last one short)."""
    return generate(stack, resolve(methods, overrides or {}, neutral=neutral), n, seed, batch_size=4,
                    progress=False, **kw)


def runnable(stack: Stack, methods: list[str]) -> dict[str, object]:
    """Overrides that let ``methods`` run on ``stack`` (CFG on); a method refused on it (Halton on
    1-D tokens) is skipped (its refusal is tested below)."""
    overrides: dict[str, object] = {"maskgit.cfg_scale": 1.0}
    try:
        resolve(methods, overrides).bind(stack)
    except ValueError as err:
        pytest.skip(str(err))
    return overrides


@pytest.mark.parametrize("stack", SAMPLING, indirect=True)
@pytest.mark.parametrize("method", OPTIONAL)
def test_neutral_config_is_the_base_sampler(sampling_stack: Stack, method: str) -> None:
    base = sample(sampling_stack, "maskgit", {"maskgit.cfg_scale": 1.0})
    neutral = sample(sampling_stack, ["maskgit", method], {"maskgit.cfg_scale": 1.0}, neutral=(method,))
    np.testing.assert_array_equal(base.images, neutral.images)
    assert base.nfe_per_image == neutral.nfe_per_image


@pytest.mark.parametrize("stack", SAMPLING, indirect=True)
def test_self_guidance_at_zero_scale_adds_nothing(sampling_stack: Stack) -> None:
    """s = 0 runs no auxiliary pass and gives the base samples; s = 1 (the default) runs it on
    this family (twice the backbone passes) and moves them."""
    base = sample(sampling_stack, "maskgit")
    off = sample(sampling_stack, "self_guidance", {"self_guidance.scale": 0.0})
    on = sample(sampling_stack, "self_guidance")
    np.testing.assert_array_equal(base.images, off.images)
    assert off.nfe_per_image == base.nfe_per_image
    assert on.nfe_per_image["backbone"] == 2 * base.nfe_per_image["backbone"]
    assert not np.array_equal(on.images, base.images)


@pytest.mark.parametrize("stack", SAMPLING, indirect=True)
@pytest.mark.parametrize("methods", [["maskgit"], *[[m] for m in OPTIONAL]], ids=lambda m: m[0])
def test_samples_do_not_depend_on_the_number_of_processes(sampling_stack: Stack, methods: list[str]) -> None:
    overrides = runnable(sampling_stack, methods)
    one = sample(sampling_stack, methods, overrides)
    two = merge([sample(sampling_stack, methods, overrides, process_index=p, num_processes=2) for p in range(2)])
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.labels, two.labels)
    assert not np.array_equal(one.images, sample(sampling_stack, methods, overrides, seed=1).images)


def assert_refused(message: str, method: str, stack: Stack) -> None:
    assert "\n" not in message, message
    assert f"method {method} needs" in message and f"stack {stack.name}" in message, message


@pytest.mark.parametrize("method", GRID_METHODS)
def test_grid_methods_run_exactly_where_the_stack_has_a_2d_grid(sampling_stack: Stack, method: str) -> None:
    recipe = resolve(method)
    if "grid2d" in sampling_stack.capabilities:
        build_sampler(recipe, sampling_stack)
        return
    with pytest.raises(ValueError) as refused:
        build_sampler(recipe, sampling_stack)
    assert_refused(str(refused.value), method, sampling_stack)


def test_a_suite_refuses_grid_methods_on_1d_tokens_before_sampling(random_trained_parts) -> None:
    """Through a suite: :func:`bind` refuses Halton on ``toy1d`` (a :class:`SuiteError` naming the
    run, the method and the stack), and so does the sweep's :func:`validate` of an unbound point;
    KA-MIG with all three graphs passes both."""
    stack = random_trained_parts(load("toy1d"))
    assert "grid2d" not in stack.capabilities
    for method in GRID_METHODS:
        suite = parse_suite({"backbone": "toy1d", "runs": [{"label": "base", "methods": ["maskgit"]},
                                                           {"label": "grid", "methods": [method]}]})
        with pytest.raises(SuiteError, match=r"^run 'grid' at \{\} on toy1d: ") as refused:
            bind(suite, {"toy1d": stack})
        assert_refused(str(refused.value), method, stack)
        validate(suite.points[0], stack)
        with pytest.raises(SuiteError, match=r"^run 'grid' at \{\} on toy1d: ") as refused:
            validate(suite.points[1], stack)
        assert_refused(str(refused.value), method, stack)
    suite = parse_suite({"backbone": "toy1d", "runs": [{"label": "ka", "methods": ["ka_mig"]}]})
    for point in bind(suite, {"toy1d": stack}).points:
        validate(point, stack)


# --- what the harness draws for any family ----------------------------------------------------

def test_grids_draw_rgb_and_at_most_ten_classes_of_ten(tmp_path) -> None:
    """1,000 classes of 11 samples give a 10 x 10 RGB grid: the first ten samples of the first
    ten classes, each drawn in its own colour, and nothing of any other sample."""
    classes, per_class, side, scale = 1000, 11, 8, 3
    labels = np.repeat(np.arange(classes), per_class)
    index = np.arange(len(labels))
    colours = np.stack([index & 255, index >> 8, np.full_like(index, 128)], axis=1).astype(np.uint8)  # unique, never grey
    images = np.broadcast_to(colours[:, None, None, :], (len(labels), side, side, 3)).copy()
    path = tmp_path / "grid.png"
    save_grid(path, images, labels, [f"class {c}" for c in range(classes)], scale=scale)
    png = Image.open(path)
    assert png.mode == "RGB" and png.size[0] * png.size[1] < 4 * 100 * (side * scale) ** 2  # not 1,000 rows
    counts = Counter(map(tuple, np.asarray(png).reshape(-1, 3).tolist()))
    shown = (labels < 10) & (index % per_class < 10)
    assert all(counts[tuple(c)] == (side * scale) ** 2 for c in colours[shown].tolist())
    assert not any(counts[tuple(c)] for c in colours[~shown].tolist())


def test_random_method_parts_sample_on_a_random_weights_stack() -> None:
    """``weights = random`` (what random-weights stacks name for their trained methods) installs
    each method's seeded ``random_parts``: the same samples twice, and other samples than the
    base sampler's."""
    from dataclasses import replace

    from migbench.config import RANDOM_PARTS

    stack = replace(load("toy"), method_weights={m: {"weights": RANDOM_PARTS, "graphs": RANDOM_PARTS}
                                                 for m in ("ka_mig", "self_guidance", "token_critic")})
    base = generate(stack, resolve(["maskgit"]).bind(stack), 4, 0, batch_size=4, progress=False).images
    for method in ("ka_mig", "self_guidance", "token_critic"):
        recipe = resolve(["maskgit", method]).bind(stack)
        first, again = (generate(stack, recipe, 4, 0, batch_size=4, progress=False).images for _ in range(2))
        assert np.array_equal(first, again) and not np.array_equal(first, base), method
