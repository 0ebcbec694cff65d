"""Throughput of the dream: env-steps/s of the batched dream, the single env and the real games.

    python benchmarks/dream_throughput.py [--threads N] [--seconds S] [--device cpu|cuda]

Random world models of the paper's sizes (Doom: z 64, LSTM 512; CarRacing: z 32,
LSTM 256) stand in for trained ones; the cost of a step does not depend on the
weights. Their done heads are silenced, so dreams run to the episode limit and
every measured step is a full M step. Also printed: the GFLOP/s the batched dream
achieves, counting the matmul FLOPs of M's step, against the same matmuls timed
alone in the same run, and how many times faster than the real game it is. With
``--device cuda`` (or ``cuda:N``) it also times a large square float32 matmul, the
device's matmul peak, in the same run, and prints the dream's GFLOP/s against it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import dreamgym
from dreamgym import WorldModel
from dreamgym.dream import DreamEnv, DreamVectorEnv

SIZES = (1, 64, 1024, 4096)
GAMES = ("doom_take_cover", "car_racing")


def random_world_model(game: str, device: str) -> WorldModel:
    torch.manual_seed(0)
    wm = WorldModel.create(game, n_bank=64)
    c = wm.mdnrnn.config
    with torch.no_grad():
        wm.z0_mu.normal_()
        wm.mdnrnn.head.bias[3 * c.n_mix * c.z_dim] = -1e4  # dreams never end on their own
    return wm.to(device)


def step_flops(wm: WorldModel) -> int:
    """Matmul FLOPs of one M step for one dream: input and recurrent gates, then the head."""
    c = wm.mdnrnn.config
    n_out = wm.mdnrnn.head.out_features
    return 2 * 4 * c.hidden * (c.z_dim + c.action_dim + c.hidden) + 2 * c.hidden * n_out


def rate(call: Callable[[], object], per_call: int, seconds: float) -> float:
    """Items per second of ``call`` (which does ``per_call`` items), after a short warm-up."""
    for _ in range(2):
        call()
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return per_call * calls / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(wm: WorldModel, n: int, seconds: float) -> float:
    """GFLOP/s of M's step matmuls alone, for n dreams: the yardstick for the dream."""
    m, dev = wm.mdnrnn, wm.device
    c = m.config
    x = torch.randn(n, c.z_dim + c.action_dim, device=dev)
    h = torch.randn(n, c.hidden, device=dev)
    w_ih, w_hh, w_out = m.lstm.weight_ih_l0.t(), m.lstm.weight_hh_l0.t(), m.head.weight.t()

    def call():
        torch.mm(x, w_ih), torch.mm(h, w_hh), torch.mm(h, w_out)
        sync(str(dev))

    return rate(call, n, seconds) * step_flops(wm) / 1e9


def peak_gflops(device: str, seconds: float, n: int = 4096) -> float:
    """GFLOP/s of an (n, n) @ (n, n) float32 matmul on ``device``: its matmul peak."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def call():
        torch.mm(a, b)
        sync(device)

    return rate(call, 1, seconds) * 2 * n**3 / 1e9


def batched_rate(wm: WorldModel, n: int, seconds: float) -> float:
    venv = DreamVectorEnv(n, wm.game.name, world_model=wm)
    venv.reset(seed=0)
    venv.action_space.seed(0)
    actions = venv.action_space.sample()
    return rate(lambda: venv.step(actions), n, seconds)


def single_rate(wm: WorldModel, seconds: float) -> float:
    env = DreamEnv(wm.game.name, world_model=wm)
    env.reset(seed=0)
    env.action_space.seed(0)
    action = env.action_space.sample()
    return rate(lambda: env.step(action), 1, seconds)


def real_rate(wm: WorldModel, seconds: float) -> float:
    real = dreamgym.make_real(wm.game.dream_id, world_model=wm)
    real.reset(seed=0)
    real.action_space.seed(0)

    def call():
        _, _, terminated, truncated, _ = real.step(real.action_space.sample())
        if terminated or truncated:
            real.reset()

    steps = rate(call, 1, seconds)
    real.close()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads (default: torch's)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--device", default="cpu", help="where the dreams run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    peak = peak_gflops(args.device, args.seconds) if cuda else None
    print(
        f"dreamgym {dreamgym.__version__}, torch {torch.__version__}, device {args.device}, "
        f"{args.threads} thread(s), {args.seconds:g} s per measurement\n"
    )
    if cuda:
        name = torch.cuda.get_device_name(torch.device(args.device))
        print(f"{name}: float32 matmul peak {peak:,.0f} GFLOP/s (4096 x 4096, this run)\n")

    for game in GAMES:
        wm = random_world_model(game, args.device)
        c = wm.mdnrnn.config
        flops = step_flops(wm)
        print(
            f"{wm.game.dream_id}: z {c.z_dim}, LSTM {c.hidden}, "
            f"{flops / 1e6:.2f} MFLOP of matmuls per dream step"
        )
        batched, mm = {}, 0.0
        for n in SIZES:
            if n == 1024:  # interleaved with its yardstick, best of 3: the machine may be shared
                for _ in range(3):
                    batched[n] = max(batched.get(n, 0.0), batched_rate(wm, n, args.seconds))
                    mm = max(mm, matmul_gflops(wm, n, args.seconds))
            else:
                batched[n] = batched_rate(wm, n, args.seconds)
            gflops = batched[n] * flops / 1e9
            print(
                f"  DreamVectorEnv num_envs={n:<5d} {batched[n]:>12,.0f} env-steps/s "
                f"{gflops:7.1f} GFLOP/s"
            )
        single = single_rate(wm, args.seconds)
        print(f"  DreamEnv                   {single:>12,.0f} env-steps/s")
        wm_cpu = random_world_model(game, "cpu")
        real = real_rate(wm_cpu, args.seconds)
        print(f"  make_real (real game)      {real:>12,.0f} env-steps/s")
        dream = batched[1024] * flops / 1e9
        print(f"  M-step matmuls alone, 1024 rows: {mm:.1f} GFLOP/s")
        print(
            f"  at 1024 envs: {dream / mm:.0%} of the matmul GFLOP/s, "
            f"{batched[1024] / single:.0f}x DreamEnv, {batched[1024] / real:.0f}x make_real\n"
        )
        if cuda:
            best = max(batched.values()) * flops / 1e9
            print(f"  on {args.device}: best {best:.1f} GFLOP/s, {best / peak:.1%} of the "
                  f"device's matmul peak ({peak:,.0f} GFLOP/s)\n")  # fmt: skip


if __name__ == "__main__":
    main()
