"""HML through Ray Train with two DDP workers (fractional CPUs): a tiny two-stage run completes and every
stage checkpoint (written by rank 0) holds finite, non-zero Fisher and importance."""
import json

import pytest
import torch
from test_pipelines_hml import store  # noqa: F401  (the tiny planted store fixture)

from components.hml.checkpoint import load_checkpoint
from pipelines.hml import HMLConfig, run


@pytest.mark.ray
def test_two_workers_two_stages_finite_nonzero_fisher_and_importance(ray_local, store, tmp_path):  # noqa: F811
    cfg = HMLConfig(store=str(store), output_dir=str(tmp_path / "out"), methods=["hml"], hidden_dim=8,
                    steps_per_stage=4, checkpoint_every=2, batch_size=4, max_bg_per_image=16, num_workers=2,
                    cpus_per_worker=0.5, max_failures=0, stages=2, stage1_share=None, track=False, progress=False, ks=[20, 50])
    res = run(cfg)
    stage_dirs = sorted((tmp_path / "out" / "stages").glob("hml-stage*"))
    assert [d.name.split("-")[1] for d in stage_dirs] == ["stage1", "stage2"]
    for d in stage_dirs:
        meta, state = load_checkpoint(d / "final.pt")
        assert meta["step"] == 4 and state["fisher"].keys() == state["importance"].keys()
        for part in ("fisher", "importance"):
            values = torch.cat([v.reshape(-1) for v in state[part].values()])
            assert torch.isfinite(values).all() and (values > 0).any(), (d.name, part)
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in rows] == [1, 2, 3, 4]
    assert 0.0 <= res["methods"]["hml"]["metrics"]["R@50"] <= 100.0
