"""Profile 100 dense16 training steps (batch 128, MNIST) and report the non-finite check's share."""
import torch
from torch.profiler import profile, ProfilerActivity
from vaescope.core.config import resolve
from vaescope.core.device import select_device
from vaescope.data.sources import load_dataset
from vaescope.data.batches import images_to_device
from vaescope.training.engine import prepare_training, train_epoch

cfg = resolve("dense16")
data = load_dataset("mnist")
device = select_device("cpu")
x = images_to_device(data.x_train[: 128 * 100], device)
setup = prepare_training(cfg, data.image_shape, device)
args = (setup.model, setup.optimizer, x, cfg.loss, 128, setup.shuffle, setup.noise)
train_epoch(*args)  # warm-up
with profile(activities=[ProfilerActivity.CPU]) as prof:
    train_epoch(*args)
events = prof.key_averages()
total_us = sum(e.self_cpu_time_total for e in events)
check = sum(e.self_cpu_time_total for e in events if "non_finite_check" in e.key)
read = [e for e in events if e.key in ("aten::item", "aten::_local_scalar_dense")]
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
print(f"self CPU time {total_us / 100 / 1000:.2f} ms a step; the check "
      f"{check / 100 / 1000:.3f} ms a step ({check / total_us:.1%})")
for e in read:
    print(f"{e.key}: {e.count} calls, {e.self_cpu_time_total / 100 / 1000:.3f} ms a step")
