"""PI0Actor on a tiny lerobot PI0: sampling, loss parity with lerobot, masking, CFG, save/load, Collector."""

from __future__ import annotations

import pytest
import torch
from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from tensordict import NonTensorData, TensorDict
from torchrl.collectors import Collector
from torchrl.data import Bounded, Composite, NonTensor, Unbounded
from torchrl.envs import EnvBase, SerialEnv

from ript.algos import PI0Actor, TinyPI0Spec, build_libero_tokenizer, load_preprocessor_stats, make_tiny_pi0_config, tiny_pi0_sizes

CHUNK, STEPS, PX, B = 4, 2, 32, 3
TASKS = ["put the bowl on the plate", "open the top drawer of the cabinet", "put the bowl on the plate"]


def make_actor(**kw) -> PI0Actor:
    return PI0Actor.tiny(chunk_size=CHUNK, n_action_steps=STEPS, image_size=PX, num_inference_steps=3, **kw)


@pytest.fixture(scope="module")
def actor() -> PI0Actor:
    return make_actor()


@pytest.fixture(scope="module")
def cfg_actor() -> PI0Actor:
    return make_actor(supports_cfg=True)


def obs_td(batch: int = B, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": {
                "image": torch.randint(0, 256, (batch, 3, PX, PX), generator=g, dtype=torch.uint8),
                "wrist_image": torch.randint(0, 256, (batch, 3, PX, PX), generator=g, dtype=torch.uint8),
                "state": torch.randn(batch, 32, generator=g),
            },
            "task": TASKS[:batch],
        },
        [batch],
    )


def train_td(seed: int = 0) -> TensorDict:
    td = obs_td(seed=seed)
    chunk = torch.zeros(B, CHUNK, 32)
    chunk[..., :7] = torch.randn(B, CHUNK, 7, generator=torch.Generator().manual_seed(seed + 1))
    td["action_chunk"] = chunk
    return td


def fixed_noise_time(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, CHUNK, 32, generator=g), torch.rand(B, generator=g) * 0.9 + 0.05


def test_tiny_actor_samples_reproducibly_with_fixed_noise(actor):
    td = obs_td()
    noise = torch.randn(B, CHUNK, 32)
    a, b = actor.sample_actions(td, noise=noise), actor.sample_actions(td, noise=noise)
    assert a.shape == (B, CHUNK, 32) and torch.equal(a, b)
    assert not torch.allclose(a, actor.sample_actions(td, noise=torch.randn(B, CHUNK, 32)))
    out = actor(td.clone())
    assert out["action_chunk"].shape == (B, CHUNK, 32) and out["action"].shape == (B, STEPS, 32)
    assert torch.equal(out["action"], out["action_chunk"][:, :STEPS])
    # stored chunks carry zeros past LIBERO's 7 real dims (lerobot pads dataset actions with zeros)
    assert actor.padded_from == 7 and out["action_chunk"][..., 7:].abs().sum() == 0
    assert out["action_chunk"][..., :7].abs().sum() > 0
    # unbatched and 2-d batches reshape through the flat path
    assert actor.sample_actions(td[0], noise=noise[0]).shape == (CHUNK, 32)
    torch.testing.assert_close(actor.sample_actions(td[0], noise=noise[0]), a[0], rtol=1e-4, atol=1e-5)


def test_language_tokens_in_td_match_task_strings(actor):
    td = obs_td()
    noise = torch.randn(B, CHUNK, 32)
    from_strings = actor.sample_actions(td, noise=noise)
    tokens, mask = actor.tokenize(TASKS)
    assert tokens[0, 0].item() == actor.tokenizer.bos_token_id and mask.dtype == torch.bool
    td2 = td.exclude("task").clone()  # exclude shares the nested "observation" tensordict
    td2["observation", "language_tokens"], td2["observation", "language_attention_mask"] = tokens, mask
    assert torch.equal(actor.sample_actions(td2, noise=noise), from_strings)
    with pytest.raises(KeyError, match="language"):
        actor.sample_actions(td.exclude("task"))


def test_per_sample_loss_equals_lerobot_forward(actor):
    td = train_td()
    noise, time = fixed_noise_time()
    ours = actor.per_sample_loss(td, noise=noise, time=time)
    batch = actor.lerobot_batch(td)
    batch["action"] = td["action_chunk"][..., :7]  # lerobot pads actions with zeros itself
    model = actor.policy.model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "sample_noise", lambda shape, device: noise)
        mp.setattr(model, "sample_time", lambda n, device: time)
        theirs, _ = actor.policy.forward(batch, reduction="none")
    assert ours.shape == (B,)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_mask_weights_valid_steps_and_ignores_masked_targets(actor):
    td = train_td()
    noise, time = fixed_noise_time()
    per_step = []
    for j in range(CHUNK):  # loss of step j alone
        one = torch.zeros(B, CHUNK, dtype=torch.bool)
        one[:, j] = True
        per_step.append(actor.per_sample_loss(td.set("action_mask", one), noise=noise, time=time))
    per_step = torch.stack(per_step, -1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    masked = actor.per_sample_loss(td.set("action_mask", mask), noise=noise, time=time)
    expected = (per_step * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    torch.testing.assert_close(masked, expected)
    assert masked[2] == 0  # no valid step: no loss
    full = actor.per_sample_loss(td.set("action_mask", torch.ones(B, CHUNK, dtype=torch.bool)), noise=noise, time=time)
    torch.testing.assert_close(full, per_step.mean(-1))
    assert not torch.allclose(masked[:2], full[:2])
    # At t = 1 the input x_t is pure noise, so a masked step's action only enters its own target: no effect.
    ones = torch.ones(B)
    base = actor.per_sample_loss(td.set("action_mask", mask), noise=noise, time=ones)
    td2 = td.clone()
    td2["action_chunk"][:, 3] += 5.0
    torch.testing.assert_close(actor.per_sample_loss(td2, noise=noise, time=ones), base)
    td2["action_chunk"][:, 0] += 5.0
    assert not torch.allclose(actor.per_sample_loss(td2, noise=noise, time=ones)[:2], base[:2])


def test_loss_action_dims_counts_padded_dims_when_asked(actor):
    td = train_td()
    noise, time = fixed_noise_time()
    wide = PI0Actor(actor.policy, tokenizer=actor.tokenizer, loss_action_dims=32)
    assert actor.action_dim_loss == 7 and wide.action_dim_loss == 32
    assert not torch.allclose(wide.per_sample_loss(td, noise=noise, time=time), actor.per_sample_loss(td, noise=noise, time=time))
    with pytest.raises(ValueError, match="loss_action_dims"):
        PI0Actor(actor.policy, loss_action_dims=33)


def test_gradients_reach_every_trainable_parameter(cfg_actor):
    cfg_actor.zero_grad(set_to_none=True)
    loss = cfg_actor.per_sample_loss(train_td(), optimality=torch.tensor([1, 2, 0])).mean()
    loss.backward()
    trainable = [(n, p) for n, p in cfg_actor.named_parameters() if p.requires_grad]
    assert len(trainable) > 20
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert no_grad == [], no_grad
    cfg_actor.zero_grad(set_to_none=True)


def test_cfg_zero_init_and_guidance_zero_equals_unconditional(cfg_actor):
    td = train_td()
    noise, time = fixed_noise_time()
    losses = [cfg_actor.per_sample_loss(td, noise=noise, time=time, optimality=torch.full((B,), k)) for k in (0, 1, 2)]
    plain = cfg_actor.per_sample_loss(td, noise=noise, time=time)
    for loss in losses:
        torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    obs = obs_td()
    uncond = cfg_actor.sample_actions(obs, noise=noise)
    # Make the positive label matter, then check w = 0 still equals unconditional exactly and w = 1 does not.
    with torch.no_grad():
        cfg_actor.label_embed.weight[1].normal_()
    try:
        torch.testing.assert_close(cfg_actor.sample_actions(obs, noise=noise, guidance=0.0), uncond, rtol=0, atol=0)
        assert not torch.allclose(cfg_actor.sample_actions(obs, noise=noise, guidance=1.0), uncond)
        pos = cfg_actor.per_sample_loss(td, noise=noise, time=time, optimality=torch.full((B,), 1))
        assert not torch.allclose(pos, plain)
        torch.testing.assert_close(cfg_actor.sample_actions(obs, noise=noise), uncond)  # label state does not leak
    finally:
        with torch.no_grad():
            cfg_actor.label_embed.weight.zero_()
    with pytest.raises(ValueError, match="supports_cfg"):
        make_actor().per_sample_loss(td, optimality=torch.ones(B, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be 0"):
        cfg_actor.per_sample_loss(td, optimality=torch.full((B,), 3))


def test_one_step_guidance_follows_the_cfg_formula(cfg_actor):
    """One Euler step: a(w) = a(0) + w (a(1) - a(0)) for w off {0, 1}, a(1) being the positive-label sample."""
    obs = obs_td()
    noise, _ = fixed_noise_time()
    with torch.no_grad():
        cfg_actor.label_embed.weight[1].normal_()
    try:
        a = {w: cfg_actor.sample_actions(obs, noise=noise, guidance=w, num_steps=1) for w in (0.0, 1.0, 2.5, -0.5)}
    finally:
        with torch.no_grad():
            cfg_actor.label_embed.weight.zero_()
    assert (a[1.0] - a[0.0]).abs().max() > 1e-3
    for w in (2.5, -0.5):
        torch.testing.assert_close(a[w], a[0.0] + w * (a[1.0] - a[0.0]), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_with_lerobot_from_pretrained(cfg_actor, tmp_path):
    obs = obs_td()
    noise = torch.randn(B, CHUNK, 32)
    with torch.no_grad():
        cfg_actor.label_embed.weight[1].normal_()
    try:
        expected, guided = cfg_actor.sample_actions(obs, noise=noise), cfg_actor.sample_actions(obs, noise=noise, guidance=1.5)
        cfg_actor.save_pretrained(tmp_path)
        # lerobot's own loader reads the checkpoint once the tiny sizes apply
        with tiny_pi0_sizes(TinyPI0Spec.load(tmp_path)):
            theirs = PI0Policy.from_pretrained(tmp_path)
        batch = cfg_actor.lerobot_batch(obs)
        images, img_masks = theirs._preprocess_images(batch)
        chunk = theirs.model.sample_actions(images, img_masks, batch["observation.language.tokens"], batch["observation.language.attention_mask"], theirs.prepare_state(batch), noise=noise)
        torch.testing.assert_close(chunk, expected)
        loaded = PI0Actor.from_pretrained(tmp_path, device="cpu")
        assert loaded.supports_cfg and loaded.tiny_spec == cfg_actor.tiny_spec
        torch.testing.assert_close(loaded.sample_actions(obs, noise=noise), expected)
        torch.testing.assert_close(loaded.sample_actions(obs, noise=noise, guidance=1.5), guided)
    finally:
        with torch.no_grad():
            cfg_actor.label_embed.weight.zero_()
    # weights that do not fit the model built from the checkpoint's sizes: a clear error, not random weights
    TinyPI0Spec(width=32, mlp_dim=64).save(tmp_path)
    with pytest.raises(ValueError, match="tiny_pi0.json"):
        PI0Actor.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(FileNotFoundError, match="config.json and model.safetensors"):
        PI0Actor.from_pretrained(tmp_path / "missing")


def test_tiny_override_is_scoped():
    from lerobot.policies.pi0 import modeling_pi0

    original = modeling_pi0.get_gemma_config
    with tiny_pi0_sizes(TinyPI0Spec(width=32)):
        assert modeling_pi0.get_gemma_config("gemma_2b").width == 32
    assert modeling_pi0.get_gemma_config is original and modeling_pi0.get_gemma_config("gemma_300m").width == 1024
    with pytest.raises(ValueError, match="divisible"):
        TinyPI0Spec(vision_width=30, vision_heads=4)


def test_preprocessor_stats_are_picked_up(tmp_path):
    from safetensors.torch import save_file

    save_file({"observation.state.mean": torch.arange(8.0), "action.std": torch.ones(7)}, str(tmp_path / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    stats = load_preprocessor_stats(tmp_path)
    assert torch.equal(stats["observation.state"]["mean"], torch.arange(8.0)) and stats["action"]["std"].shape == (7,)
    assert load_preprocessor_stats(tmp_path / "nothing") is None


def test_tokenizer_is_offline_and_paligemma_shaped():
    tok = build_libero_tokenizer()
    out = tok(["Pick up the ketchup and place it in the basket\n"], max_length=16, padding="max_length", truncation=True, return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id == 2 and tok.pad_token_id == 0 and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[11]) == "\n" and ids[12:] == [0] * 4
    assert out["attention_mask"][0].sum() == 12


class FakeLiberoEnv(EnvBase):
    """PI0-transformed observations (tiny images), chunked actions, a task string; ends after 3 steps."""

    def __init__(self, task: str):
        super().__init__(batch_size=[])
        self.task = task
        self.observation_spec = Composite(
            observation=Composite(
                image=Bounded(0, 255, (3, PX, PX), dtype=torch.uint8),
                wrist_image=Bounded(0, 255, (3, PX, PX), dtype=torch.uint8),
                state=Unbounded((32,)),
            ),
            task=NonTensor(shape=(), example_data=task),
        )
        self.action_spec = Unbounded((STEPS, 32))
        self.reward_spec = Unbounded((1,))
        self.t = 0

    def _obs(self) -> TensorDict:
        return TensorDict(
            {
                "observation": {
                    "image": torch.randint(0, 256, (3, PX, PX), dtype=torch.uint8),
                    "wrist_image": torch.randint(0, 256, (3, PX, PX), dtype=torch.uint8),
                    "state": torch.randn(32),
                },
                "task": NonTensorData(self.task),
            },
            [],
        )

    def _reset(self, td=None):
        self.t = 0
        return self._obs().set("done", torch.zeros(1, dtype=torch.bool)).set("terminated", torch.zeros(1, dtype=torch.bool))

    def _step(self, td):
        assert td["action"].shape == (STEPS, 32)
        self.t += 1
        done = torch.tensor([self.t >= 3])
        return self._obs().update({"reward": -td["action"][..., :7].abs().mean().reshape(1), "done": done, "terminated": done})

    def _set_seed(self, seed):
        torch.manual_seed(seed)


def test_actor_is_a_collector_policy_on_a_batched_env(actor):
    env = SerialEnv(2, [lambda: FakeLiberoEnv(TASKS[0]), lambda: FakeLiberoEnv(TASKS[1])])
    # the actor needs no env transforms (no recurrent state): do not let torchrl add an InitTracker
    collector = Collector(env, actor, frames_per_batch=4, total_frames=4, auto_register_policy_transforms=False)
    try:
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    assert batch["action_chunk"].shape[-2:] == (CHUNK, 32) and batch["action"].shape[-2:] == (STEPS, 32)
    assert batch.numel() == 4 and torch.isfinite(batch["next", "reward"]).all()


def test_recorded_noise_is_lerobots_draw_and_relabels_with_more_steps(actor, cfg_actor):
    from ript.algos import relabel_chunks

    torch.manual_seed(3)
    plain = actor(obs_td().clone())
    actor.record_noise = True
    try:
        torch.manual_seed(3)
        recorded = actor(obs_td().clone())
    finally:
        actor.record_noise = False
    # recording changes nothing about what is sampled (same RNG draw as lerobot's own sample_actions)
    assert torch.equal(plain["action_chunk"], recorded["action_chunk"]) and recorded["action_noise"].shape == (B, CHUNK, 32)
    same = relabel_chunks(actor, recorded, num_steps=3)  # the actor's own num_inference_steps
    torch.testing.assert_close(same["action_chunk"], recorded["action_chunk"], rtol=1e-4, atol=1e-5)
    fine = relabel_chunks(actor, recorded, num_steps=12)
    assert fine["action_chunk"][..., 7:].abs().sum() == 0
    assert not torch.allclose(fine["action_chunk"], recorded["action_chunk"], atol=1e-3)
    # the guided sampler takes the step count too
    noise = torch.randn(B, CHUNK, 32)
    guided = cfg_actor.sample_actions(obs_td(), noise=noise, guidance=1.5, num_steps=3)
    assert not torch.allclose(guided, cfg_actor.sample_actions(obs_td(), noise=noise, guidance=1.5, num_steps=8), atol=1e-4)


def test_noise_scale_is_saved_and_used_when_acting(tmp_path):
    actor = make_actor()
    actor.noise_scale = 1.7
    loaded = PI0Actor.from_pretrained(actor.save_pretrained(tmp_path / "scaled"), device="cpu")
    assert loaded.noise_scale == pytest.approx(1.7)
    torch.manual_seed(5)
    acted = loaded(obs_td().clone())
    torch.manual_seed(5)
    unit = loaded.draw_noise(B)
    torch.testing.assert_close(acted["action_chunk"][..., :7], loaded.sample_actions(obs_td(), noise=1.7 * unit)[..., :7], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("part", ["vision", "trunk"])
def test_freeze_leaves_the_frozen_part_unchanged_and_trains_the_rest(part):
    actor = make_actor()
    actor.freeze(part)
    actor.train()
    pwe = actor.policy.model.paligemma_with_expert
    frozen = pwe.paligemma.model.vision_tower if part == "vision" else pwe.paligemma
    assert not frozen.training  # lerobot keeps a frozen part in eval mode through train()
    before = {n: p.detach().clone() for n, p in actor.named_parameters()}
    frozen_names = {n for n, p in actor.named_parameters() if any(p is q for q in frozen.parameters())}
    opt = torch.optim.SGD([p for p in actor.parameters() if p.requires_grad], lr=1e-2)
    actor.per_sample_loss(train_td()).mean().backward()
    opt.step()
    moved = {n for n, p in actor.named_parameters() if not torch.equal(p, before[n])}
    assert frozen_names and not (moved & frozen_names)
    assert any(n.startswith("policy.model.paligemma_with_expert.gemma_expert") for n in moved)
    if part == "vision":  # the language model still trains
        assert any(".language_model." in n for n in moved)


def test_freeze_rejects_an_unknown_part():
    with pytest.raises(ValueError, match="use one of"):
        make_actor().freeze("expert")


def _loss_and_grads(actor: PI0Actor, optimality: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    actor.zero_grad(set_to_none=True)
    noise, time = fixed_noise_time()
    loss = actor.per_sample_loss(train_td(), noise=noise, time=time, optimality=optimality).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in actor.named_parameters() if p.grad is not None}
    actor.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_gradient_checkpointing_changes_no_gradient_and_acts_only_in_train_mode(monkeypatch):
    """Same loss and gradients with and without lerobot's checkpointing (CFG labels included: the hook re-runs in
    backward); it recomputes only in train mode, so sampling in eval mode (rollouts) never checkpoints."""
    from ript.algos import training_mode

    actor = make_actor(supports_cfg=True)
    with torch.no_grad():
        actor.label_embed.weight[1:].normal_()  # a non-zero CFG embedding, so the labels matter
    labels = torch.tensor([1, 2, 0])
    with training_mode(actor, True):
        plain_loss, plain_grads = _loss_and_grads(actor, labels)
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    actor.set_gradient_checkpointing(True)
    assert actor.policy.model.gradient_checkpointing_enabled and actor.policy.config.gradient_checkpointing
    with training_mode(actor, False):
        actor.sample_actions(obs_td(), noise=fixed_noise_time()[0][:, :CHUNK])
    assert calls == []  # collection (eval mode): no recomputation
    with training_mode(actor, True):
        ckpt_loss, ckpt_grads = _loss_and_grads(actor, labels)
    assert len(calls) > 0  # the update (train mode) checkpoints
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-6, atol=1e-7)
    assert ckpt_grads.keys() == plain_grads.keys() and len(plain_grads) > 20
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    actor.set_gradient_checkpointing(False)
    assert not actor.policy.model.gradient_checkpointing_enabled


def test_bf16_autocast_on_cpu_matches_fp32_and_steps_finitely():
    """amp=bf16 on a CPU: the loss stays close to float32's and an optimizer step leaves finite weights; no scaler."""
    from ript.recipes.training.optim import amp_dtype, make_grad_scaler

    cpu = torch.device("cpu")
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("off", cpu) is None
    assert make_grad_scaler("bf16", cpu) is None and make_grad_scaler("fp16", cpu) is None
    assert make_grad_scaler("bf16", torch.device("cuda")) is None  # bf16 has float32's range: no scaler anywhere
    actor = make_actor()
    noise, time = fixed_noise_time()
    fp32 = actor.per_sample_loss(train_td(), noise=noise, time=time)
    optimizer = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast(device_type="cpu", dtype=amp_dtype("bf16", cpu)):
        bf16 = actor.per_sample_loss(train_td(), noise=noise, time=time)
    torch.testing.assert_close(bf16.float(), fp32, rtol=5e-2, atol=1e-2)
    bf16.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in actor.parameters() if p.grad is not None)
    before = actor.policy.model.action_out_proj.weight.detach().clone()
    optimizer.step()
    after = actor.policy.model.action_out_proj.weight
    assert torch.isfinite(after).all() and not torch.equal(after, before)
    assert all(torch.isfinite(p).all() for p in actor.parameters())


def test_bf16_construction_gives_lerobots_dtypes_and_weights(tmp_path):
    """Building in bfloat16 directly (no float32 copy) ends with the dtypes lerobot's own cast gives, and loads the same weights."""
    from ript.algos import bf16_construction

    config = make_tiny_pi0_config(chunk_size=CHUNK, n_action_steps=STEPS, image_size=PX, dtype="bfloat16")
    spec = TinyPI0Spec()
    with tiny_pi0_sizes(spec):
        reference = PI0Policy(config)
        with bf16_construction(config):
            direct = PI0Policy(config)
    assert torch.get_default_dtype() is torch.float32  # restored
    ref_dtypes = {k: v.dtype for k, v in reference.state_dict().items()}
    assert {k: v.dtype for k, v in direct.state_dict().items()} == ref_dtypes
    assert torch.bfloat16 in set(ref_dtypes.values()) and torch.float32 in set(ref_dtypes.values())
    reference.save_pretrained(tmp_path)
    with tiny_pi0_sizes(spec):
        loaded = PI0Policy.from_pretrained(str(tmp_path), config=config, local_files_only=True)
        with bf16_construction(config):
            loaded_direct = PI0Policy.from_pretrained(str(tmp_path), config=config, local_files_only=True)
    for name, value in loaded.state_dict().items():
        assert torch.equal(loaded_direct.state_dict()[name], value), name
