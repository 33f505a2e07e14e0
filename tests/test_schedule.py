"""Progressive training and KL annealing (schedule.py): the fade-in curve, which parameters learn in
each stage, the per-level KL weights the loop applies, the recipes, and the options it refuses."""
import json
import math

import pytest
import torch

from vlae_fast import schedule
from vlae_fast.config import TrainConfig
from vlae_fast.deskew import deskew
from vlae_fast.normalize import normalize
from vlae_fast.errors import ConfigError
from vlae_fast.guards import NonFiniteGuard
from vlae_fast.models import build_model, default_config, make_config
from vlae_fast.resume import plan_resume
from vlae_fast.rundir import plan_run
from vlae_fast.train import make_optimizer, make_step, train


def progressive(**kw) -> TrainConfig:
    cfg = TrainConfig(**{"steps": 30, "schedule": "progressive", "kl_anneal": "exp", "pre_kl": 0.25, **kw})
    cfg.resolve_stages(3)
    return cfg


def recording_step(seen: list, targets: list | None = None):
    """A stand-in for train's make_step that appends, per step, the groups' lr and the parameters as the step
    found them to `seen` (and the batch x with the reconstruction target handed to the step to `targets`), then
    runs the real step."""
    def recording(net, model, optimizer, *a, **kw):
        step = make_step(net, model, optimizer, *a, **kw)

        def run(x, w, eps, target=None):
            seen.append(([g["lr"] for g in optimizer.param_groups],
                         {n: p.detach().clone() for n, p in model.named_parameters()}))
            if targets is not None:
                targets.append((x.clone(), None if target is None else target.clone()))
            return step(x, w, eps, target)
        return run
    return recording


def test_fade_curve_and_kl_weights_per_stage():
    cfg = progressive(stage_steps=10, fade_steps=4, warmup=5)
    assert (cfg.stage_steps, cfg.fade_steps) == (10, 4)
    assert [schedule.level_start(l, 3, 10) for l in (1, 2, 3)] == [20, 10, 0]
    # level 2 starts at step 10: 0 before, then 1/4, 2/4, 3/4, 1 and 1 after
    assert [schedule.fade(t, 2, 3, 10, 4) for t in (0, 9, 10, 11, 12, 13, 14, 29)] == [0, 0, .25, .5, .75, 1, 1, 1]
    assert [schedule.fade(t, 3, 3, 10, 4) for t in (0, 2, 3, 29)] == [.25, .75, 1, 1]  # the top level fades in too
    assert schedule.fade(20, 1, 3, 10, 0) == 1.0 and schedule.fade(19, 1, 3, 10, 0) == 0.0  # no fade: a switch
    alphas, ws = schedule.weights(12, cfg, 3)
    w = 1 - torch.exp(torch.tensor(-13 / 5.0)).item()
    assert alphas == [0.0, 0.75, 1.0]
    assert ws[0] == 0.25 and ws[1:] == pytest.approx([w, w])  # level 1 not yet on: pre_kl; the others: annealed
    assert schedule.weights(12, TrainConfig(steps=30, warmup=15), 3) == ([1.0] * 3, [13 / 15] * 3)  # plain
    assert schedule.progressive_length(3, 10, 4) == 24


def test_default_stages_scale_with_the_run():
    cfg = progressive(steps=6000)
    assert (cfg.stage_steps, cfg.fade_steps, cfg.warmup) == (2000, 500, 1000)
    assert TrainConfig(steps=600).warmup == 300 and TrainConfig(steps=600, kl_anneal="exp").warmup == 100
    tiny = progressive(steps=2)  # shorter than the 3 levels: no stages, every level on from step 0
    assert tiny.stage_steps == 0 and schedule.weights(0, tiny, 3)[0] == [1.0, 1.0, 1.0]


def test_each_stage_trains_only_the_levels_switched_on():
    """Stage 1 (top level alone): the lower levels' generator inputs v_1, v_2 get no update at all, while their
    encoders' heads still learn from the pre-KL term; stage 2: v_2 learns, v_1 still does not."""
    torch.manual_seed(0)
    model = build_model(make_config({"model": "vlae", "latent_dims": [2, 2, 2], "channels": [4, 8], "hidden": 16,
                                     "join": "gated_add"}))
    opt = make_optimizer(model, 1e-2)
    step = make_step(model, model, opt, NonFiniteGuard(opt, torch.device("cpu")))
    cfg = progressive(stage_steps=3, fade_steps=2, warmup=2)
    params = lambda: {k: v.detach().clone() for k, v in model.named_parameters()}  # noqa: E731
    changed = lambda a, b, prefix: [k for k in a if k.startswith(prefix) and not torch.equal(a[k], b[k])]  # noqa: E731
    x = torch.rand(16, 1, 28, 28)
    start = params()
    for t in range(6):
        if t == 3:
            stage1 = params()
        alphas, ws = schedule.weights(t, cfg, 3)
        model.fade.copy_(torch.tensor(alphas))
        step(x, torch.tensor(ws), None)
    stage2 = params()
    assert changed(start, stage1, "v.") == [] and changed(start, stage1, "f_top.")
    assert changed(start, stage1, "q.0.") and changed(start, stage1, "q.1.")  # pre-KL: posteriors pulled to the prior
    assert changed(stage1, stage2, "v.1.") and changed(stage1, stage2, "v.0.") == []


def test_zero_pre_kl_leaves_switched_off_encoders_untouched():
    torch.manual_seed(0)
    model = build_model(make_config({"model": "vlae", "latent_dims": [2, 2], "channels": [4, 8], "hidden": 16}))
    model.fade.copy_(torch.tensor([0.0, 1.0]))
    out = model(torch.rand(8, 1, 28, 28))
    (out.recon.mean() + (torch.tensor([0.0, 1.0]) * out.kl.mean(0)).sum()).backward()
    assert all(p.grad is None or not p.grad.any() for n, p in model.named_parameters() if n.startswith(("q.0.", "v.0.")))
    assert model.q[1].mu.weight.grad.any()


def test_training_applies_and_logs_the_schedule(tmp_path, mnist_dir, monkeypatch):
    """What each step of train() actually ran with (the model's fade and the KL weights handed to the step)
    and what it logged are schedule.weights of that step; the logged loss is recon + sum_l w_l KL_l."""
    seen = []

    def recording(net, model, *a, **kw):
        step = make_step(net, model, *a, **kw)
        return lambda x, w, eps, target=None: (seen.append((model.fade.tolist(), w.tolist())), step(x, w, eps, target))[1]

    monkeypatch.setattr("vlae_fast.train.make_step", recording)
    m = default_config("mnist", "vlae", latent_dims=[2, 2, 2], hidden=32, join="gated_add")
    cfg = TrainConfig(steps=9, schedule="progressive", kl_anneal="exp", warmup=3, stage_steps=3, fade_steps=2,
                      pre_kl=0.3, first_kl=2.0, batch_size=20, train_limit=100, eval_limit=40,
                      data_dir=str(mnist_dir), device="cpu", log_every=1, save_every=0)
    train(m, cfg, tmp_path / "run", show_progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert len(seen) == len(lines) == 9
    for t, (line, (fade, w)) in enumerate(zip(lines, seen)):
        alphas, ws = schedule.weights(t, cfg, 3)
        assert line["fade"] == alphas == fade and line["kl_weights"] == ws and w == pytest.approx(ws)
        assert line["loss"] == pytest.approx(line["recon"] + sum(a * b for a, b in zip(ws, line["kl"])), rel=1e-5)
    assert [f[0] for f, _ in seen] == [0, 0, 0, 0, 0, 0, 0.5, 1, 1]


def test_recipes_and_explicit_options(mnist_dir):
    opts = {"data_dir": mnist_dir}
    h = plan_run("mnist", {**opts, "recipe": "hierarchy"})
    assert (h.train_cfg.schedule, h.train_cfg.kl_anneal, h.model_cfg.join, h.train_cfg.recipe, h.train_cfg.gate_init,
            h.train_cfg.kl_target) == ("progressive", "exp", "gated_add", "hierarchy", 0.3, (0, 6, 0))
    p = plan_run("mnist", {**opts, "recipe": "paper"})
    assert (p.train_cfg.schedule, p.train_cfg.kl_anneal, p.model_cfg.join, p.train_cfg.kl_target) == \
        ("plain", "linear", "concat", None)
    # the recipe's level-2 target: measured on three levels only; yields to --free-bits and to a target of one's own
    assert plan_run("mnist", {**opts, "layers": 2}).train_cfg.kl_target is None
    assert plan_run("mnist", {**opts, "layers": 4}).train_cfg.kl_target is None
    fb = plan_run("mnist", {**opts, "free_bits": (0, 5, 0)}).train_cfg
    assert (fb.free_bits, fb.kl_target) == ((0, 5, 0), None)
    assert plan_run("mnist", {**opts, "kl_target": (0, 0, 4)}).train_cfg.kl_target == (0, 0, 4)
    off = plan_run("mnist", {**opts, "kl_target": (0, 0, 0)}).train_cfg
    off.resolve_stages(3)  # as train() does: every level 0 = no controller
    assert off.kl_target is None
    assert plan_run("mnist", {**opts, "model": "conv_vlae", "layers": 3}).train_cfg.kl_target is None
    # the recipe's first-stage target: the MNIST MLP ladder's, with a first stage; yields to a target of one's own
    assert (h.train_cfg.first_target, plan_run("mnist", opts).train_cfg.first_target) == ("normalize", "normalize")
    assert plan_run("mnist", {**opts, "model": "conv_vlae", "layers": 3}).train_cfg.first_target == "x"
    assert plan_run("mnist", {**opts, "schedule": "plain"}).train_cfg.first_target == "x"
    assert plan_run("mnist", {**opts, "first_target": "deskew"}).train_cfg.first_target == "deskew"
    assert plan_run("mnist", {**opts, "steps": 2}).train_cfg.first_target == "x"  # stages of 0 steps: no first stage
    assert plan_run("mnist", {**opts, "layers": 1}).train_cfg.first_target == "x"
    assert p.train_cfg.first_target == "x"
    mixed = plan_run("mnist", {**opts, "recipe": "hierarchy", "join": "concat", "steps": 900, "hidden": 512})
    assert (mixed.model_cfg.join, mixed.train_cfg.steps, mixed.model_cfg.hidden) == ("concat", 900, 512)
    assert mixed.train_cfg.gate_init is None  # the recipe's gate goes with its join
    own_gate = plan_run("mnist", {**opts, "join": "gated_add", "gate_init": 0.6})
    assert own_gate.train_cfg.gate_init == 0.6
    for model in ("hvae", "lvae", "ar_hvae"):  # no ladder: MNIST's default is the figure3 recipe (docs/gibbs.md)
        hv = plan_run("mnist", {**opts, "model": model})
        assert (hv.train_cfg.recipe, hv.train_cfg.schedule, hv.train_cfg.kl_anneal, hv.train_cfg.steps,
                hv.train_cfg.warmup, hv.train_cfg.kl_scale, hv.model_cfg.latent_dims, hv.model_cfg.output,
                hv.model_cfg.hidden) == ("figure3", "plain", "linear", 5000, 1500, (4, 2, 1), (10, 10, 10),
                                         "bernoulli", 1024)
        paper = plan_run("mnist", {**opts, "model": model, "recipe": "paper"})
        assert (paper.train_cfg.kl_scale, paper.model_cfg.latent_dims, paper.model_cfg.output,
                paper.train_cfg.steps) == (None, (2, 2, 2), "gaussian", 4000)
    two = plan_run("mnist", {**opts, "model": "hvae", "layers": 2, "steps": 100})  # factors and warm-up follow
    assert (two.train_cfg.kl_scale, two.train_cfg.warmup, two.model_cfg.latent_dims) == ((2, 1), 30, (10, 10))
    own = plan_run("mnist", {**opts, "model": "hvae", "kl_scale": (1, 1, 1), "latent_dims": [2], "warmup": 7})
    assert (own.train_cfg.kl_scale, own.model_cfg.latent_dims, own.train_cfg.warmup) == ((1, 1, 1), (2, 2, 2), 7)
    with pytest.raises(ConfigError, match="figure3 is for the hvae, lvae, ar_hvae models"):
        plan_run("mnist", {**opts, "recipe": "figure3"})
    with pytest.raises(ConfigError, match="hierarchy is for the vlae, conv_vlae models"):
        plan_run("mnist", {**opts, "model": "lvae", "recipe": "hierarchy"})
    d = plan_run("mnist", opts)  # MNIST's default: the hierarchy recipe
    assert (d.train_cfg.recipe, d.train_cfg.schedule, d.model_cfg.hidden, d.train_cfg.steps) == \
        ("hierarchy", "progressive", 512, 6000)


def test_refused_settings(tmp_path, mnist_dir):
    base = dict(train_limit=100, eval_limit=40, data_dir=str(mnist_dir), device="cpu", batch_size=20)
    with pytest.raises(ConfigError, match="at least 25"):  # (3 - 1) x 10 + 5
        train(default_config("mnist"), TrainConfig(steps=20, schedule="progressive", stage_steps=10, fade_steps=5,
                                                   **base), tmp_path / "a", show_progress=False)
    with pytest.raises(ConfigError, match="no ladder"):
        train(default_config("mnist", "hvae"), TrainConfig(steps=20, schedule="progressive", **base),
              tmp_path / "b", show_progress=False)
    with pytest.raises(ConfigError, match="at most --steps / 3"):
        train(default_config("mnist"), TrainConfig(steps=20, kl_anneal="exp", warmup=10, **base),
              tmp_path / "c", show_progress=False)
    for bad in ({"schedule": "staged"}, {"kl_anneal": "cosine"}, {"stage_steps": -1}, {"pre_kl": -1}, {"first_kl": -1},
                {"input_noise": -0.1}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_kl_scale_multiplies_each_level_weight(tmp_path, mnist_dir):
    cfg = progressive(stage_steps=10, fade_steps=4, warmup=5, kl_scale=(3, 2, 1))
    base = progressive(stage_steps=10, fade_steps=4, warmup=5)
    for t in (0, 12, 25):
        assert schedule.weights(t, cfg, 3)[1] == pytest.approx([b * w for b, w in zip((3, 2, 1), schedule.weights(t, base, 3)[1])])
    assert schedule.weights(3, TrainConfig(steps=10, warmup=4, kl_scale=(0, 2)), 2)[1] == [0.0, 2.0]
    with pytest.raises(ConfigError, match="2 factors for 3 levels"):
        train(default_config("mnist"), TrainConfig(steps=4, kl_scale=(1, 2), train_limit=100, data_dir=str(mnist_dir),
                                                   device="cpu"), tmp_path / "a", show_progress=False)


def test_first_kl_multiplies_the_top_level_weight_in_the_first_stage_only(tmp_path, mnist_dir):
    """--first-kl B: the top level's KL weight times B while it trains alone (steps 0 .. stage - 1), then as before;
    the levels below and the plain schedule are untouched. vlae train records it in settings.toml."""
    cfg, base = progressive(stage_steps=10, fade_steps=4, warmup=5, first_kl=3), progressive(stage_steps=10, fade_steps=4, warmup=5)
    for t in range(30):
        got, want = schedule.weights(t, cfg, 3)[1], schedule.weights(t, base, 3)[1]
        assert got[:2] == want[:2] and got[2] == pytest.approx(want[2] * (3 if t < 10 else 1)), t
    plain = TrainConfig(steps=10, warmup=4, first_kl=3)
    assert schedule.weights(0, plain, 3) == schedule.weights(0, TrainConfig(steps=10, warmup=4), 3)
    from typer.testing import CliRunner
    from vlae_fast.cli.app import app

    r = CliRunner().invoke(app, ["train", "mnist", "--steps", "4", "--stage-steps", "1", "--fade-steps", "1",
                                 "--warmup", "1", "--first-kl", "2.5", "--hidden", "32", "--train-limit", "40",
                                 "--batch-size", "20", "--eval-limit", "20", "--data-dir", str(mnist_dir), "--out",
                                 str(tmp_path / "run"), "--device", "cpu", "--no-progress", "--log-every", "1"])
    assert r.exit_code == 0, r.output
    assert 'first-kl = 2.5' in (tmp_path / "run" / "settings.toml").read_text()
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["kl_weights"][2] == pytest.approx(2.5 * (1 - torch.exp(torch.tensor(-1.0)).item()))


def test_kl_scale_may_change_on_resume(tmp_path, mnist_dir):
    """A run trained with KL factors 3,2,1 goes on from its checkpoint with 1,1,1 (the plain ELBO): the steps
    after the resume weigh every level's KL by 1, the steps before by the old factors."""
    opts = dict(model="hvae", latent_dims=[2], hidden=32, steps=3, warmup=0, batch_size=20, train_limit=100,
                eval_limit=40, log_every=1, save_every=0, data_dir=mnist_dir, device="cpu", kl_scale=(3, 2, 1))
    first = plan_run("mnist", opts, out=tmp_path)
    train(first.model_cfg, first.train_cfg, first.run_dir, show_progress=False)
    again = plan_run("mnist", {"steps": 5, "kl_scale": (1, 1, 1)}, given={"steps", "kl_scale"}, resume=tmp_path)
    assert again.train_cfg.kl_scale == (1, 1, 1) and again.start.step == 3
    train(again.model_cfg, again.train_cfg, again.run_dir, start=again.start, show_progress=False)
    lines = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
    for r in lines:
        factors = (3, 2, 1) if r["step"] <= 3 else (1, 1, 1)
        assert r["loss"] == pytest.approx(r["recon"] + sum(b * k for b, k in zip(factors, r["kl"])), rel=1e-5)
    with pytest.raises(ConfigError, match="--seed"):  # the model and data options stay fixed
        plan_run("mnist", {"steps": 6, "seed": 1}, given={"steps", "seed"}, resume=tmp_path)


def test_top_lr_slows_only_the_top_levels_own_parameters_after_its_stage(tmp_path, mnist_dir, monkeypatch):
    """--top-lr F: the top level's own modules (g_L, q_L, f_L) learn at lr during its stage, at F * lr after it;
    checked in train()'s own loop with F = 0: from the top's stage on, they stay as they were, everything else moves."""
    cfg = progressive(stage_steps=10, fade_steps=4, warmup=5, top_lr=0.25)
    assert [schedule.top_lr_factor(t, cfg, 3) for t in (0, 9, 10, 29)] == [1, 1, 0.25, 0.25]
    assert schedule.top_lr_factor(20, TrainConfig(steps=30), 3) == 1.0
    model = build_model(make_config({"model": "vlae", "latent_dims": [2, 2, 2], "channels": [4, 8], "hidden": 16}))
    is_top = lambda n: n.startswith(("g.2.", "q.2.", "f_top."))  # noqa: E731
    groups = make_optimizer(model, 1e-3, True).param_groups
    assert {n for n, p in model.named_parameters() if any(p is q for q in groups[1]["params"])} == \
        {n for n, _ in model.named_parameters() if is_top(n)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # every parameter, once
    assert len(make_optimizer(model, 1e-3).param_groups) == 1  # without --top-lr: one group, as before

    seen = []  # per step: the groups' lr, and the parameters as the step found them
    monkeypatch.setattr("vlae_fast.train.make_step", recording_step(seen))
    m = default_config("mnist", "vlae", latent_dims=[2, 2, 2], hidden=32, join="gated_add")
    run = TrainConfig(steps=8, schedule="progressive", kl_anneal="exp", warmup=2, stage_steps=3, fade_steps=1,
                      top_lr=0.0, lr=1e-3, batch_size=20, train_limit=100, eval_limit=40, data_dir=str(mnist_dir),
                      device="cpu", save_every=0)
    train(m, run, tmp_path / "run", show_progress=False)
    assert [lr for lr, _ in seen] == [[1e-3, 1e-3]] * 3 + [[1e-3, 0.0]] * 5
    after_stage, last = seen[3][1], seen[-1][1]
    assert all(torch.equal(after_stage[n], last[n]) for n in last if is_top(n))  # frozen from step 3 on
    assert any(not torch.equal(seen[0][1][n], after_stage[n]) for n in last if is_top(n))  # but learnt in its stage
    assert any(not torch.equal(after_stage[n], last[n]) for n in last if n.startswith("g.1."))  # the rest learns
    assert "top-lr = 0.0" in (tmp_path / "run" / "settings.toml").read_text()
    seen.clear()  # resumed after the top's stage (restore sets every group to --lr): the top stays at 0
    model_cfg, more, ckpt = plan_resume(tmp_path / "run", steps=10)
    train(model_cfg, more, tmp_path / "run", show_progress=False, start=ckpt)
    assert [lr for lr, _ in seen] == [[1e-3, 0.0]] * 2
    assert all(torch.equal(after_stage[n], seen[-1][1][n]) for n in last if is_top(n))
    with pytest.raises(ConfigError, match="--top-lr"):
        TrainConfig(top_lr=0.5)  # no stages: nothing to slow after
    with pytest.raises(ConfigError, match="--top-lr"):
        TrainConfig(schedule="progressive", top_lr=-1)


def test_top_lr_scope_inference_freezes_the_tops_code_but_not_its_generator(tmp_path, mnist_dir, monkeypatch):
    """--top-lr-scope inference: --top-lr acts on the top's inference path (with a separate top encoder its own
    trunk g_top and head q_L) and f_L keeps learning; checked in train()'s own loop with --top-lr 0."""
    m_cfg = make_config({"model": "vlae", "latent_dims": [2, 2, 2], "channels": [4, 8], "hidden": 16,
                         "top_encoder": "separate"})
    model = build_model(m_cfg)
    is_path = lambda n: n.startswith(("g_top.", "q.2."))  # noqa: E731
    groups = make_optimizer(model, 1e-3, True, inference_only=True).param_groups
    assert {n for n, p in model.named_parameters() if any(p is q for q in groups[1]["params"])} == \
        {n for n, _ in model.named_parameters() if is_path(n)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    seen = []  # per step: the groups' lr, and the parameters as the step found them
    monkeypatch.setattr("vlae_fast.train.make_step", recording_step(seen))
    m = default_config("mnist", "vlae", latent_dims=[2, 2, 2], hidden=32, join="gated_add", top_encoder="separate")
    run = TrainConfig(steps=7, schedule="progressive", kl_anneal="exp", warmup=2, stage_steps=3, fade_steps=1,
                      top_lr=0.0, top_lr_scope="inference", lr=1e-3, batch_size=20, train_limit=100, eval_limit=40,
                      data_dir=str(mnist_dir), device="cpu", save_every=0)
    train(m, run, tmp_path / "run", show_progress=False)
    assert [lr for lr, _ in seen] == [[1e-3, 1e-3]] * 3 + [[1e-3, 0.0]] * 4
    first, after_stage, last = seen[0][1], seen[3][1], seen[-1][1]
    weights = [n for n in last if "running" not in n and "num_batches" not in n]
    assert all(torch.equal(after_stage[n], last[n]) for n in weights if is_path(n))  # the top's code: frozen
    assert any(not torch.equal(first[n], after_stage[n]) for n in weights if is_path(n))  # learnt in its stage
    assert any(not torch.equal(after_stage[n], last[n]) for n in weights if n.startswith("f_top."))  # f_L learns
    assert "top-lr-scope = \"inference\"" in (tmp_path / "run" / "settings.toml").read_text()
    with pytest.raises(ConfigError, match="--top-lr-scope"):
        TrainConfig(schedule="progressive", top_lr_scope="inference")  # without --top-lr there is nothing to scope
    with pytest.raises(ConfigError, match="--top-lr-scope"):
        TrainConfig(schedule="progressive", top_lr=0.5, top_lr_scope="encoder")

def test_level_warmup_restarts_each_lower_levels_weight_at_its_start(tmp_path, mnist_dir):
    """--level-warmup T': a level below the top takes pre_kl before its start and 1 - exp(-(t - start + 1) / T')
    from it; the top level keeps the run's warm-up; 0 (the default) is the run's weight for every level."""
    cfg, base = progressive(stage_steps=10, fade_steps=4, warmup=5, level_warmup=2), progressive(stage_steps=10, fade_steps=4, warmup=5)
    for t in range(30):
        got, want = schedule.weights(t, cfg, 3)[1], schedule.weights(t, base, 3)[1]
        assert got[2] == want[2], t
        for level, start in ((1, 20), (2, 10)):
            expect = 0.25 if t < start else 1 - torch.exp(torch.tensor(-(t - start + 1) / 2.0)).item()
            assert got[level - 1] == pytest.approx(expect), (t, level)
    assert schedule.weights(10, cfg, 3)[1][1] < 0.4 < schedule.weights(10, base, 3)[1][1]  # nearly free at its start
    base_opts = dict(train_limit=100, eval_limit=40, data_dir=str(mnist_dir), device="cpu", batch_size=20)
    with pytest.raises(ConfigError, match="bottom level trains 10 steps"):  # exp: 3 x 4 > 30 - 20
        train(default_config("mnist"), TrainConfig(steps=30, schedule="progressive", kl_anneal="exp", warmup=5,
                                                   stage_steps=10, fade_steps=4, level_warmup=4, **base_opts),
              tmp_path / "a", show_progress=False)
    with pytest.raises(ConfigError):
        TrainConfig(level_warmup=-1)


def test_free_bits_make_a_levels_first_nats_free(tmp_path, mnist_dir):
    """--free-bits lambda: the loss takes max(KL_l, lambda_l). A level under its budget gets no KL gradient at all
    (the step equals one whose KL weight is 0); the logged loss is recon + sum_l w_l max(KL_l, lambda_l); the
    option reaches settings.toml and a wrong count is refused."""
    def one_step(free_bits, w):
        torch.manual_seed(0)
        model = build_model(make_config({"model": "vlae", "latent_dims": [2, 2, 2], "channels": [4, 8], "hidden": 16}))
        opt = make_optimizer(model, 1e-2)
        step = make_step(model, model, opt, NonFiniteGuard(opt, torch.device("cpu")), free_bits=free_bits)
        torch.manual_seed(1)
        x, eps = torch.rand(16, 1, 28, 28), [torch.randn(16, 2) for _ in range(3)]
        stats = step(x, torch.tensor(w), eps)
        return stats, dict(model.named_parameters())

    stats, free = one_step((1e3, 0.0, 0.0), [1.0, 1.0, 1.0])  # level 1 far under its budget
    _, no_kl = one_step(None, [0.0, 1.0, 1.0])
    _, plain = one_step(None, [1.0, 1.0, 1.0])
    assert all(torch.equal(free[k], no_kl[k]) for k in free)
    assert not torch.equal(free["q.0.mu.weight"], plain["q.0.mu.weight"])
    assert stats[0].item() == pytest.approx(stats[1].item() + 1e3 + stats[3].item() + stats[4].item(), rel=1e-6)

    from typer.testing import CliRunner
    from vlae_fast.cli.app import app

    args = ["train", "mnist", "--steps", "4", "--stage-steps", "1", "--fade-steps", "1", "--warmup", "1", "--hidden", "32",
            "--train-limit", "40", "--batch-size", "20", "--eval-limit", "20", "--data-dir", str(mnist_dir), "--device",
            "cpu", "--no-progress", "--log-every", "1"]
    r = CliRunner().invoke(app, args + ["--free-bits", "3,2,0", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert 'free-bits = "3,2,0"' in (tmp_path / "run" / "settings.toml").read_text()
    for line in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()):
        if "loss" in line:
            want = line["recon"] + sum(w * max(k, b) for w, k, b in zip(line["kl_weights"], line["kl"], (3, 2, 0)))
            assert line["loss"] == pytest.approx(want, rel=1e-5)
    r = CliRunner().invoke(app, args + ["--free-bits", "3,2", "--out", str(tmp_path / "two")])
    assert r.exit_code == 2 and "--free-bits gives 2 numbers for 3 levels" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, args + ["--free-bits", "3,-1,0", "--out", str(tmp_path / "neg")])
    assert r.exit_code == 2 and "free bits must be numbers of nats >= 0" in r.output


def test_gate_init_starts_the_gated_join_at_the_given_value(tmp_path, mnist_dir):
    """--gate-init G: every gated-add join's gate starts at G (the hierarchy recipe's 0.3, the block's 0.1 under
    --recipe paper); the option reaches settings.toml;
    a model without a gated join and a gate of 0 are refused before a run folder is made."""
    from safetensors import safe_open
    from typer.testing import CliRunner
    from vlae_fast.cli.app import app

    args = ["train", "mnist", "--steps", "1", "--hidden", "32", "--join", "gated_add", "--lr", "1e-6",
            "--train-limit", "40", "--batch-size", "20", "--eval-limit", "20", "--data-dir", str(mnist_dir), "--device",
            "cpu", "--no-progress"]
    for name, extra, want in (("default", [], 0.3), ("paper", ["--recipe", "paper"], 0.1),  # the recipe's, the block's
                              ("set", ["--gate-init", "0.7"], 0.7)):
        r = CliRunner().invoke(app, args + extra + ["--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        with safe_open(str(tmp_path / name / "ckpt.safetensors"), "pt") as f:
            gates = [f.get_tensor(k) for k in f.keys() if k.endswith(".gate")]
        assert len(gates) == 2 and all(torch.allclose(g, torch.full_like(g, want), atol=1e-4) for g in gates)
    assert "gate-init = 0.7" in (tmp_path / "set" / "settings.toml").read_text()
    r = CliRunner().invoke(app, args + ["--join", "concat", "--gate-init", "0.5", "--out", str(tmp_path / "concat")])
    assert r.exit_code == 2 and "joins by concat, so drop --gate-init" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "concat").exists()
    r = CliRunner().invoke(app, args + ["--gate-init", "0", "--out", str(tmp_path / "zero")])
    assert r.exit_code == 2 and "--gate-init must be a number > 0" in r.output


def test_top_encoder_separate_reaches_the_checkpoint_settings_and_resume(tmp_path, mnist_dir):
    """--top-encoder separate: the checkpoint holds the top's own trunk (g_top) and a shared trunk without the top's
    block, settings.toml repeats it, the loaded model encodes through it, and a resumed run keeps it."""
    from safetensors import safe_open
    from typer.testing import CliRunner
    from vlae_fast.checkpoint import load_model
    from vlae_fast.cli.app import app

    args = ["train", "mnist", "--steps", "2", "--hidden", "32", "--train-limit", "40", "--batch-size", "20",
            "--eval-limit", "20", "--data-dir", str(mnist_dir), "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(app, args + ["--top-encoder", "separate", "--out", str(tmp_path / "sep")])
    assert r.exit_code == 0, r.output
    with safe_open(str(tmp_path / "sep" / "ckpt.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any(k.startswith("model.g_top.2.") for k in keys) and not any(k.startswith("model.g.2.") for k in keys)
    assert any(k.startswith("model.g.1.") for k in keys)
    assert 'top-encoder = "separate"' in (tmp_path / "sep" / "settings.toml").read_text()
    model = load_model(tmp_path / "sep" / "ckpt.safetensors")[0]
    assert model.cfg.top_encoder == "separate" and model.g_top is not None
    r = CliRunner().invoke(app, ["train", "mnist", "--resume", str(tmp_path / "sep"), "--steps", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert load_model(tmp_path / "sep" / "ckpt.safetensors")[0].cfg.top_encoder == "separate"
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "shared")])  # the default: eq. 12's one trunk
    assert r.exit_code == 0 and "top-encoder" not in (tmp_path / "shared" / "settings.toml").read_text()


def test_lr_decay_cosine_sets_every_groups_lr_in_the_loop(tmp_path, mnist_dir, monkeypatch):
    """--lr-decay cosine: 1 before --lr-decay-start, then (1 + cos(pi (t - s) / (T - s))) / 2 on every group, times
    --top-lr's factor on the top's group; checked against the closed form and in train()'s own loop (the lr each step
    ran with), with metrics.jsonl logging it; a resumed run goes on along the same curve."""
    cfg = progressive(stage_steps=10, fade_steps=4, warmup=5, lr_decay="cosine", lr_decay_start=10)
    assert [schedule.lr_factor(t, cfg) for t in (0, 9, 10)] == [1.0, 1.0, 1.0]
    assert schedule.lr_factor(20, cfg) == pytest.approx(0.5) and schedule.lr_factor(25, cfg) == pytest.approx(
        (1 + math.cos(math.pi * 15 / 20)) / 2)
    f = [schedule.lr_factor(t, cfg) for t in range(10, 30)]
    assert all(a > b for a, b in zip(f, f[1:])) and 0 < f[-1] < 0.01  # falls every step, to ~0 at the last
    assert schedule.lr_factor(25, progressive(stage_steps=10, fade_steps=4, warmup=5)) == 1.0  # no decay: constant

    seen = []
    monkeypatch.setattr("vlae_fast.train.make_step", recording_step(seen))
    m = default_config("mnist", "vlae", latent_dims=[2, 2, 2], hidden=32, join="gated_add")
    run = TrainConfig(steps=8, schedule="progressive", kl_anneal="exp", warmup=2, stage_steps=3, fade_steps=1,
                      top_lr=0.5, lr_decay="cosine", lr_decay_start=2, lr=1e-3, batch_size=20, train_limit=100,
                      eval_limit=40, data_dir=str(mnist_dir), device="cpu", save_every=0, log_every=1)
    train(m, run, tmp_path / "run", show_progress=False)
    d = [1, 1] + [(1 + math.cos(math.pi * (t - 2) / 6)) / 2 for t in range(2, 8)]
    want = [[1e-3 * d[t], 1e-3 * d[t] * (1 if t < 3 else 0.5)] for t in range(8)]
    assert [lr for lr, _ in seen] == [pytest.approx(w, rel=1e-12) for w in want]
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["lr"] for l in lines if "lr" in l] == pytest.approx([w[0] for w in want], rel=1e-12)
    assert 'lr-decay = "cosine"' in (tmp_path / "run" / "settings.toml").read_text()
    seen.clear()  # resumed with two more steps: the rest of the curve now ends at step 10
    model_cfg, more, ckpt = plan_resume(tmp_path / "run", steps=10)
    assert more.lr_decay == "cosine" and more.lr_decay_start == 2
    train(model_cfg, more, tmp_path / "run", show_progress=False, start=ckpt)
    assert [lr for lr, _ in seen] == [pytest.approx([1e-3 * f, 0.5e-3 * f], rel=1e-12)
                    for f in ((1 + math.cos(math.pi * (t - 2) / 8)) / 2 for t in (8, 9))]


@pytest.mark.parametrize("name,reshape", [("deskew", deskew), ("normalize", normalize)])
def test_first_target_scores_the_tops_stage_on_the_reshaped_images(tmp_path, mnist_dir, monkeypatch, name, reshape):
    """--first-target deskew / normalize: during the first stage (the top alone) each step's reconstruction target
    is the batch deskewed (deskew.py) or normalised (normalize.py), from the second stage on none (x itself); the
    loss is scored on that target; kept in settings.toml; refused without progressive stages and on colour images."""
    seen, targets = [], []
    monkeypatch.setattr("vlae_fast.train.make_step", recording_step(seen, targets))
    m = default_config("mnist", "vlae", latent_dims=[2, 2, 2], hidden=32, join="gated_add")
    run = TrainConfig(steps=7, schedule="progressive", kl_anneal="exp", warmup=2, stage_steps=3, fade_steps=1,
                      first_target=name, lr=1e-3, batch_size=20, train_limit=100, eval_limit=40,
                      data_dir=str(mnist_dir), device="cpu", save_every=0)
    train(m, run, tmp_path / "run", show_progress=False)
    assert [t is not None for _, t in targets] == [True] * 3 + [False] * 4
    for x, t in targets[:3]:
        assert torch.equal(t, reshape(x)) and not torch.equal(t, x)
    assert f'first-target = "{name}"' in (tmp_path / "run" / "settings.toml").read_text()

    model = build_model(make_config({"model": "vlae", "latent_dims": [2, 2, 2], "channels": [4, 8], "hidden": 16}))
    opt = make_optimizer(model, 0.0)  # lr 0: score the step without moving the weights
    step = make_step(model, model, opt, NonFiniteGuard(opt, torch.device("cpu")))
    x = targets[0][0]
    eps = [torch.randn(len(x), 2) for _ in range(3)]
    torch.manual_seed(0)
    model.eval()  # batch norm on running statistics: the same forward pass for both calls
    with torch.no_grad():
        out = model(x, eps)
        want = model.recon_nll(targets[0][1], out.logits).mean() + out.kl.mean(0).sum()
    got = step(x, torch.ones(3), eps, targets[0][1])[0]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert abs(got.item() - (out.recon.mean() + out.kl.mean(0).sum()).item()) > 1e-3  # x would score otherwise

    with pytest.raises(ConfigError, match="--first-target"):
        TrainConfig(first_target=name)  # plain schedule: no first stage
    with pytest.raises(ConfigError, match="--first-target"):
        TrainConfig(schedule="progressive", first_target="blur")
    rgb = default_config("svhn", "conv_vlae")
    with pytest.raises(ConfigError, match=f"--first-target {name}"):
        train(rgb, TrainConfig(dataset="svhn", steps=30, schedule="progressive", first_target=name, device="cpu"),
              tmp_path / "rgb", show_progress=False)


def test_first_levels_trains_the_top_levels_together_then_each_lower_one(tmp_path, mnist_dir, monkeypatch):
    """--first-levels 2 on three levels: levels 3 and 2 both start at step 0 (fade, KL weight), level 1 a stage later;
    --first-kl, --top-lr and --first-target act on that whole first stage. Through vlae train's own loop, from the
    command line: the fades the steps ran with and the deskewed targets; kept in settings.toml; refused when it
    would switch on every level at once, without stages, or below 1."""
    cfg = progressive(stage_steps=10, fade_steps=4, warmup=5, first_levels=2, first_kl=3, top_lr=0.5)
    base = progressive(stage_steps=10, fade_steps=4, warmup=5)
    assert [schedule.level_start(l, 3, 10, 2) for l in (1, 2, 3)] == [10, 0, 0]
    assert [schedule.fade(t, 2, 3, 10, 4, 2) for t in (0, 1, 2, 3, 29)] == [.25, .5, .75, 1, 1]
    assert [schedule.fade(t, 1, 3, 10, 4, 2) for t in (9, 10, 13)] == [0, .25, 1]
    assert schedule.first_stage_end(cfg, 3) == 10 and schedule.first_stage_end(base, 3) == 10
    assert schedule.progressive_length(3, 10, 4, 2) == 14 and schedule.progressive_length(3, 10, 4) == 24
    for t in range(30):
        _, got = schedule.weights(t, cfg, 3)
        w = schedule.kl_weight(t, 5, "exp")
        assert got[1] == pytest.approx(w) and got[2] == pytest.approx(w * (3 if t < 10 else 1)), t
        assert got[0] == (0.25 if t < 10 else pytest.approx(w))  # level 1: pre_kl until its start, a stage in
        assert schedule.top_lr_factor(t, cfg, 3) == (1 if t < 10 else 0.5)
    assert schedule.weights(3, base, 3)[1][1] == 0.25  # the default: level 2 not yet on

    fades, targets = [], []
    monkeypatch.setattr("vlae_fast.train.make_step", recording_step([], targets))
    real_weights = schedule.weights
    monkeypatch.setattr("vlae_fast.schedule.weights", lambda *a: (fades.append(real_weights(*a)[0]), real_weights(*a))[1])
    from typer.testing import CliRunner
    from vlae_fast.cli.app import app

    r = CliRunner().invoke(app, ["train", "mnist", "--steps", "7", "--stage-steps", "3", "--fade-steps", "1",
                                 "--first-levels", "2", "--first-target", "deskew", "--hidden", "32",
                                 "--train-limit", "100", "--batch-size", "20", "--eval-limit", "20", "--data-dir",
                                 str(mnist_dir), "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress",
                                 "--save-every", "0"])
    assert r.exit_code == 0, r.output
    assert fades == [[0, 1, 1]] * 3 + [[1, 1, 1]] * 4
    assert [t is not None for _, t in targets] == [True] * 3 + [False] * 4
    assert "first-levels = 2" in (tmp_path / "run" / "settings.toml").read_text()

    for bad, match in (({"first_levels": 0}, ">= 1"), ({"first_levels": 2}, "no stages")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="all 3 levels together"):
        progressive(first_levels=3)
    r = CliRunner().invoke(app, ["train", "mnist", "--layers", "2", "--first-levels", "2", "--data-dir", str(mnist_dir),
                                 "--out", str(tmp_path / "bad"), "--device", "cpu"])
    assert r.exit_code != 0 and "--first-levels 2" in r.output and "Traceback" not in r.output
