"""Merging Hub ids: references resolve through huggingface_hub (here the loopback test Hub) to a commit."""

from __future__ import annotations

import pytest
import torch
from hub_server import running_hub
from huggingface_hub import HfApi

import hf_tsv


@pytest.fixture
def hub_with_models(tiny, tmp_path):
    with running_hub(tmp_path / "hub") as hub:
        api = HfApi()
        for name, folder in [("base", tiny["base"])] + [(f"ft{i}", t) for i, t in enumerate(tiny["tasks"])]:
            api.create_repo(f"ns/{name}")
            api.upload_folder(repo_id=f"ns/{name}", folder_path=folder)
        yield hub


def test_merge_hub_ids_records_resolved_revisions(hub_with_models, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    sha = hub_with_models.repos["ns/ft1"].commits[-1].oid
    result = hf_tsv.merge("ns/base", ["ns/ft0", f"ns/ft1@{sha}", "ns/ft2"])
    local = hf_tsv.merge(tiny["base"], tiny["tasks"])
    assert all(torch.equal(result.state_dict()[k], v) for k, v in local.state_dict().items())
    models = result.report.models
    assert [m.repo_id for m in models] == ["ns/ft0", "ns/ft1", "ns/ft2"]
    assert models[1].revision == sha and all(len(m.revision) == 40 for m in models)
    assert result.report.base.source == "hub"
    with pytest.raises(hf_tsv.MergeInputError, match="ns/missing.*Hub download failed"):
        hf_tsv.merge("ns/base", ["ns/ft0", "ns/missing"])
