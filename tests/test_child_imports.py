"""The worker's child processes start without the models' libraries (river, scipy)."""

import subprocess
import sys


def _imports_of(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_store_writer_and_relay_modules_do_not_import_river_or_scipy():
    # The store writer child runs streams.runtime.store_batch; the relay child imports streams.runtime for
    # notify_sinks. river pulls in scipy: about 0.7 s of CPU at every start of each child, which a worker
    # spent on its first batches.
    for module in ("streams.runtime", "streams.store_writer", "streams.delivery", "sinks.outbox"):
        loaded = _imports_of(module)
        assert "river" not in loaded and "scipy" not in loaded, module


def test_feedback_model_makes_its_river_model_on_demand():
    from pipeline.feedback import FeedbackModel

    model = FeedbackModel(min_verdicts=1)
    assert type(model.model).__module__.startswith("river.")
