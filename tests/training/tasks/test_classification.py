import torch

from training.config import ModelConfig
from training.evaluate import random_encoder
from training.export_format import ExportInfo
from training.lars import LARS
from training.modalities.image.bundle import ImageInputConfig
from training.tasks.config import KnnConfig
from training.tasks.downstream import topk_accuracy
from training.tasks.finetune import Classifier, layer_decay_groups
from training.tasks.probe import ProbeHead, knn_classify


def _export(**model):
    return ExportInfo(
        "image", "mae", ImageInputConfig(32, 8), ModelConfig(preset="nano", **model), {}
    )


def _blobs(n_per_class=40, classes=5, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 4
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centers[y] + torch.randn(len(y), dim, generator=gen), y


def test_knn_separates_separable_features():
    x, y = _blobs()
    vx, vy = x[::3] + 0.01, y[::3]
    scores = knn_classify(x, y, vx, vy, 5, KnnConfig(k=5))
    assert scores["top1"] == 100.0


def test_knn_over_shares_votes_as_knn_over_all_features():
    """The sharded k-NN (each rank keeps its share of the train features, the k best of every
    share are merged) gives the votes of k-NN over every feature in one place, shares of 0 and
    of fewer than k rows included."""
    from training.tasks.probe import knn_logits, nearest

    x, y = _blobs(n_per_class=30, dim=8, seed=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    x = x + noise * 3  # overlapping classes: the votes are not unanimous
    vx = x[1::4] + 0.5
    whole = knn_logits(*(t[None] for t in nearest(vx, x, y, 20)), 20, 5, 0.07)
    cuts = [0, 0, 7, 60, 150]  # rank shares of 0, 7, 53, 90 and 0 rows
    shares = [nearest(vx, x[a:b], y[a:b], 20) for a, b in zip(cuts, [*cuts[1:], len(x)])]
    merged = knn_logits(
        torch.stack([s for s, _ in shares]), torch.stack([lab for _, lab in shares]), 20, 5, 0.07
    )
    torch.testing.assert_close(merged, whole)


def _probe(train_x, train_y, val_x, val_y, epochs=60, batch=64, lr=2.5):
    """MAE's probe head and optimizer, trained plainly (the stage runs it under DeepSpeed)."""
    torch.manual_seed(0)
    head = ProbeHead(train_x.shape[1], 5)
    opt = LARS(head.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_x)).split(batch):
            loss = torch.nn.functional.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        return topk_accuracy(head(val_x), val_y, 5)


def test_linear_probe_learns_and_chance_stays_chance():
    x, y = _blobs()
    assert _probe(x, y, x, y)["top1"] > 90.0
    assert _probe(torch.randn_like(x), y, torch.randn_like(x), y)["top1"] < 50.0


def test_probe_head_normalises_without_affine_parameters():
    head = ProbeHead(16, 5)
    assert not head.norm.affine
    assert {n for n, _ in head.named_parameters()} == {"head.weight", "head.bias"}
    x = torch.randn(256, 16) * 50 + 7  # the features' scale does not reach the linear layer
    normed = head.norm(x)
    assert normed.mean(0).abs().max() < 1e-4 and (normed.std(0) - 1).abs().max() < 0.01


def test_top5_only_with_five_classes_or_more():
    logits = torch.randn(10, 4)
    assert set(topk_accuracy(logits, torch.zeros(10, dtype=torch.long), 4)) == {"top1"}
    assert set(topk_accuracy(torch.randn(10, 6), torch.zeros(10, dtype=torch.long), 6)) == {
        "top1",
        "top5",
    }


def test_layer_decay_scales_lr_by_depth():
    encoder = random_encoder(_export(), seed=0)
    groups = layer_decay_groups(Classifier(encoder, 3), base_lr=1.0, weight_decay=0.05, decay=0.5)
    depth = len(encoder.blocks)
    by_name = {}
    model = Classifier(encoder, 3)
    ids = {id(p): n for n, p in model.named_parameters()}
    for g in layer_decay_groups(model, 1.0, 0.05, 0.5):
        for p in g["params"]:
            by_name[ids[id(p)]] = g["lr"]
    assert by_name["head.weight"] == 1.0
    assert by_name["encoder.patch_embed.weight"] == 0.5 ** (depth + 1)
    assert by_name["encoder.blocks.0.attn.qkv.weight"] == 0.5**depth
    assert len(groups) > 2


def test_a_frozen_start_holds_the_encoders_lr_at_zero_and_trains_the_head():
    """``freeze_epochs``: for the first steps every encoder group's lr factor is 0 (its final
    norm included, though it shares the head's layer), the head's follows warmup + cosine; then
    both follow the same schedule. Off, every group has the same factors."""
    from training.schedule import warmup_cosine
    from training.tasks.trainer import Schedule, lr_factors

    model = Classifier(random_encoder(_export(), seed=0), 3)
    groups = layer_decay_groups(model, 1.0, 0.05, 0.65, apart=True)
    ids = {id(p): n for n, p in model.named_parameters()}
    names = [[ids[id(p)] for p in g["params"]] for g in groups]
    assert all(g["encoder"] == all(n.startswith("encoder.") for n in ns)
               for g, ns in zip(groups, names))  # fmt: skip
    assert any("encoder.norm.weight" in ns for ns, g in zip(names, groups) if g["encoder"])
    assert not any(g["encoder"] for g in layer_decay_groups(model, 1.0, 0.05, 0.65))  # as before
    schedule = Schedule(epochs=10, batch_size=8, steps_per_epoch=5, lr=1.0, warmup_steps=5,
                        eval_every=1, frozen_steps=15)  # fmt: skip
    factors = lr_factors(groups, schedule)
    for g, factor in zip(groups, factors):
        for step in range(schedule.total):
            shape = warmup_cosine(step, 50, 5, 1.0, 0.0)
            frozen = g["encoder"] and step < 15
            assert factor(step) == (0.0 if frozen else shape), (g["encoder"], step)
    off = lr_factors(groups, Schedule(10, 8, 5, 1.0, 5, 1))
    assert all(f(3) == off[0](3) > 0 for f in off)


def test_random_encoder_is_reproducible():
    a, b = random_encoder(_export(), 3), random_encoder(_export(), 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _two_rank_norm(rank: int, port: int, x: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    from training.tasks.probe import GlobalBatchNorm1d

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)  # fmt: skip
    norm = GlobalBatchNorm1d(x.shape[1], affine=False, eps=1e-6)
    mine = x[rank * 6 : (rank + 1) * 6].clone().requires_grad_()
    y = norm(mine)
    (y * torch.arange(1.0, 1 + y.numel()).view_as(y) / 10).sum().backward()
    torch.save({"y": y.detach(), "grad": mine.grad, "running": norm.running_var}, f"{out}/{rank}")
    # both ranks past the backward's collective before either tears gloo down (once, under load,
    # rank 0 aborted in teardown: "terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()


def test_the_probe_standardises_by_the_global_batch_on_every_rank(tmp_path):
    """Two gloo ranks with 6 rows each give the outputs, input gradients and running statistics
    of one BatchNorm over the 12 rows (before: each rank standardised by its own 6)."""
    import torch.multiprocessing as mp

    from cluster.local import free_port

    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mp.spawn(_two_rank_norm, args=(free_port(), x, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / str(r)) for r in range(2)]
    whole = torch.nn.BatchNorm1d(5, affine=False, eps=1e-6)
    full = x.clone().requires_grad_()
    y = whole(full)
    weights = torch.cat([torch.arange(1.0, 31).view(6, 5)] * 2) / 10
    (y * weights).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach())
    torch.testing.assert_close(torch.cat([r["grad"] for r in ranks]), full.grad)
    torch.testing.assert_close(ranks[0]["running"], whole.running_var)


def test_a_frozen_start_leaves_the_encoder_bit_for_bit_under_adamw():
    """The factors drive the optimizer the tasks hand DeepSpeed (AdamW, decoupled weight decay,
    LambdaLR): during the frozen steps the encoder's weights do not move at all (its decay is
    scaled by its lr, 0) while the head's do; after them the encoder trains."""
    from training.tasks.trainer import Schedule, lr_factors

    torch.manual_seed(0)
    model = Classifier(random_encoder(_export(), seed=0), 3)
    groups = layer_decay_groups(model, 1e-2, 0.05, 0.65, apart=True)
    schedule = Schedule(epochs=2, batch_size=4, steps_per_epoch=2, lr=1e-2, warmup_steps=1,
                        eval_every=1, frozen_steps=2)  # fmt: skip
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(groups, schedule))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 16, 8 * 8 * 3)  # 32 px pictures in 8 px patches

    def step():
        optimizer.zero_grad()
        model(x).logsumexp(dim=-1).mean().backward()
        optimizer.step()
        scheduler.step()

    for _ in range(2):
        step()
    now = model.state_dict()
    assert all(torch.equal(start[k], now[k]) for k in start if k.startswith("encoder."))
    assert not torch.equal(start["head.weight"], now["head.weight"])
    step()
    after = model.state_dict()
    assert not torch.equal(start["encoder.blocks.0.attn.qkv.weight"],
                           after["encoder.blocks.0.attn.qkv.weight"])  # fmt: skip
