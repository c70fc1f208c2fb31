"""SnapKV eviction: scores against an independent reference, physical shrinking,
exact equality with transformers' greedy generate at alpha = 0, and correct
positions after eviction."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from timebill_ros.core.engine import Engine, EngineConfig, chunk_bounds
from timebill_ros.core.eviction import evict, kept_count, kept_indices
from timebill_ros.core.jobs import CancelToken, Request, Status
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel

WINDOW, KERNEL = 16, 5
FREE = TimingModel(0.0, 0.0, 0.0, 1e-9, 1e-9)  # budgets never bind in these tests


def prompt_ids(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 250, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def engine(tiny):
    e = Engine(tiny, FREE, FixedLengthPredictor(8), EngineConfig(snapkv_window=WINDOW, prefill_chunk=64))
    yield e
    e.close()


@pytest.fixture(scope="module")
def eager_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()


def reference_scores(eager_model, ids: list[int]) -> list[torch.Tensor]:
    """SnapKV scores from the model's own eager attention weights (one unchunked forward):
    the method as published, computed independently of our hooks."""
    with torch.no_grad():
        out = eager_model(torch.tensor([ids]), output_attentions=True)
    cfg = eager_model.config
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    result = []
    for attn in out.attentions:  # [1, heads, N, N]
        w = attn[..., -WINDOW:, :-WINDOW].mean(dim=-2)
        w = F.avg_pool1d(w, kernel_size=KERNEL, padding=KERNEL // 2, stride=1)
        w = w.view(1, cfg.num_key_value_heads, groups, -1).mean(dim=2)
        result.append(F.pad(w, (0, WINDOW), value=float("inf")))  # the window is always kept
    return result


@pytest.mark.parametrize("n", [40, 150, 300])
@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9])
def test_kept_indices_match_the_reference(engine, eager_model, n, alpha):
    ids = prompt_ids(n, seed=n)
    engine.prefill(ids)  # chunked (64 tokens) prefill; scores from the last chunk's hooks
    ours = engine.scorer.scores
    ref = reference_scores(eager_model, ids)
    n_keep = kept_count(n, alpha, WINDOW)
    for layer, ref_scores in enumerate(ref):
        assert torch.allclose(ours[layer], ref_scores, atol=1e-5)
        assert torch.equal(kept_indices(ours[layer], n_keep), kept_indices(ref_scores, n_keep))
    # The observation window is always kept.
    window = set(range(n - WINDOW, n))
    assert window <= set(kept_indices(ours[0], n_keep)[0, 0].tolist())


def test_eviction_physically_shrinks_every_layer(engine):
    ids = prompt_ids(200)
    cache, _ = engine.prefill(ids)
    kept = evict(cache, engine.scorer.scores, 0.75, WINDOW)
    assert kept == kept_count(200, 0.75, WINDOW) == 50
    assert all(layer.keys.shape[2] == 50 and layer.values.shape[2] == 50 for layer in cache.layers)
    assert cache.get_seq_length() == 50


def test_alpha_zero_equals_transformers_generate(engine, tiny):
    for seed, n in [(1, 30), (2, 170), (3, 300)]:
        ids = prompt_ids(n, seed)
        result = engine.run(Request(ids, budget=100.0, max_new_tokens=24, fixed_alpha=0.0), CancelToken())
        with torch.no_grad():
            ref = tiny.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert result.status is Status.SUCCEEDED
        assert result.token_ids == ref[0, n:].tolist()[: len(result.token_ids)]
        assert len(result.token_ids) == 24 or result.token_ids[-1] in tiny.eos_token_ids


def test_alpha_zero_logits_equal_generate_logits(engine, tiny):
    """Random models repeat tokens, so also compare every step's logits with generate's."""
    ids = prompt_ids(170, seed=2)
    with torch.no_grad():
        ref = tiny.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0,
                                  output_logits=True, return_dict_in_generate=True)
    cache, logits = engine.prefill(ids)
    token = int(logits.argmax(-1))
    assert torch.allclose(logits[0], ref.logits[0][0], atol=1e-4)
    for step in range(1, 12):
        logits = engine.decode_step(cache, token, len(ids) + step - 1)
        assert torch.allclose(logits[0], ref.logits[step][0], atol=1e-4)
        token = int(logits.argmax(-1))


def test_decode_after_eviction_uses_true_positions(engine, eager_model):
    """Decoding after eviction must equal a full forward whose attention masks are
    masked off the evicted prompt entries (per KV head) and keep their true positions."""
    assert_decode_after_eviction_matches_masked_forward(engine, eager_model, prompt_ids(120, seed=7), 0.5, WINDOW)


def assert_decode_after_eviction_matches_masked_forward(engine, eager_model, ids, alpha, window, steps=6):
    """Evict ALPHA after the engine's prefill, decode STEPS tokens, and compare every step's
    logits with one eager forward of the whole sequence under per-layer, per-head masks."""
    n = len(ids)
    cache, logits = engine.prefill(ids)
    n_keep = kept_count(n, alpha, window)
    keep = [kept_indices(s, n_keep)[0] for s in (engine.scorer.scores[i] for i in range(len(cache.layers)))]
    evict(cache, engine.scorer.scores, alpha, window)
    tokens, ours = [int(logits.argmax(-1))], []
    for i in range(steps):
        step_logits = engine.decode_step(cache, tokens[-1], n + i)
        ours.append(step_logits[0])
        tokens.append(int(step_logits.argmax(-1)))

    cfg = eager_model.config
    groups = cfg.num_attention_heads // cfg.num_key_value_heads
    full = torch.tensor([ids + tokens[:steps]])
    total = full.shape[1]
    # Each layer kept its own entries, so each layer gets its own mask (set by a pre-hook).
    masks = []
    for layer_keep in keep:
        mask = torch.full((cfg.num_key_value_heads, total, total), float("-inf")).triu(1)
        mask = torch.where(mask == 0, 0.0, mask)
        for head in range(cfg.num_key_value_heads):
            evicted = torch.ones(n, dtype=torch.bool)
            evicted[layer_keep[head]] = False
            mask[head, n:, :n][:, evicted] = float("-inf")
        masks.append(mask.repeat_interleave(groups, dim=0).unsqueeze(0))
    reference = _forward_with_layer_masks(eager_model, full, masks)
    for i in range(steps):
        assert torch.allclose(ours[i], reference[0, n + i], atol=1e-4)


def _forward_with_layer_masks(model, ids, masks):
    """Full forward where layer l's attention gets masks[l] added (eager attention)."""
    handles = []
    for layer, mask in zip(model.model.layers, masks):
        def pre_hook(module, args, kwargs, mask=mask):
            kwargs["attention_mask"] = mask
            return args, kwargs
        handles.append(layer.self_attn.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for h in handles:
            h.remove()


def test_chunk_bounds_cover_the_prompt_and_keep_a_full_last_window():
    assert chunk_bounds(10, 512, 32) == [(0, 10)]
    assert chunk_bounds(1030, 512, 32) == [(0, 512), (512, 1030)]  # a 6-token tail is merged
    assert chunk_bounds(1100, 512, 32) == [(0, 512), (512, 1024), (1024, 1100)]
    for n in range(1, 400):
        bounds = chunk_bounds(n, 64, 16)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert bounds[-1][1] - bounds[-1][0] >= min(n, 16)
