"""Class-grouped batches and the SupCon memory survive a SIGKILL: a resumed run ends exactly like an
uninterrupted one (the sampler replays the epoch's batches; the memory is checkpointed with the model)."""
from __future__ import annotations

import pytest
import torch

from test_checkpoint import _final, _kill_after_checkpoint, _resume, _train

OPTIONS = ["method.name=scpl", "data.sampler=grouped", "data.samples_per_class=4", "method.supcon_queue=64"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["grouped", "class_balanced"])
def test_sigkill_and_resume_with_sampler_and_queue(tmp_path, train_forks, sampler):
    options = [*OPTIONS, f"data.sampler={sampler}"]
    reference = tmp_path / "uninterrupted"  # a fresh interpreter; the killed and resumed runs are forks
    assert _train(reference, *options).returncode == 0
    interrupted = tmp_path / "interrupted"
    for step in (4, 20):  # mid first epoch; in the second epoch after a resume
        _kill_after_checkpoint(train_forks, interrupted, step, *options)
    code, log = _resume(train_forks, interrupted, *options)
    assert code == 0, log[-3000:]
    assert "resumed from" in log
    (w_ref, r_ref, m_ref), (w_new, r_new, m_new) = _final(reference), _final(interrupted)
    assert any("queue" in key for key in w_ref)
    assert w_ref.keys() == w_new.keys() and all(torch.equal(w_ref[k], w_new[k]) for k in w_ref)
    assert m_ref == m_new and r_ref["test_accuracy"] == r_new["test_accuracy"]
