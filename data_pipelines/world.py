"""The procedural world: a deterministic audio-visual-action toy world with correlated modalities.

Why: measuring cross-modal effects of a multimodal generative model (does the audio it makes
line up with the collisions in its video? do actions move the agent?) needs data in which video,
audio and actions are *causally* linked, is always there (no download), and is cheap enough to
generate on a laptop. Every sound here is caused by a visible collision, its loudness by the
impact speed and ball mass, its pitch by the ball's material and size, and one ball moves
because of the actions.

World. The unit square [0, 1]^2 (x to the right = image column, y downward = image row) holds
``min_balls``..``max_balls`` balls (count uniform per clip). Ball i has radius r_i (uniform in
``radius_range``), mass m_i = (r_i / R_REF)^2 and a material from :data:`MATERIALS` (uniform):

  id  name    colour         restitution  pitch f0   decay tau  modes (ratio: amp)
  0   wood    orange-brown   0.55         800 Hz     15 ms      1: 1, 2.7: 0.4
  1   metal   steel blue     0.75         2200 Hz    35 ms      1: 1, 2.76: 0.5, 5.4: 0.25
  2   rubber  green          0.85         300 Hz      8 ms      1: 1, 2.1: 0.3

so pitch order is rubber < wood < metal for every radius (the radius factor below keeps the
bands disjoint: rubber 260-370 Hz, wood 690-980 Hz, metal 1900-2700 Hz for radii 0.06-0.12).

Ball 0 is the *agent*. Action a_t in [-1, 1]^2 (held for 1/action_hz s) pushes it with force
``force_scale`` * a_t. Policy: an Ornstein-Uhlenbeck process per axis (correlation time
``policy_tau`` s, stationary std ``policy_std``, started from its stationary law), clipped to
[-1, 1] - smooth, zero-mean, and independent of the state (so actions are exogenous and their
effect on the agent is identifiable). Every ball, the agent included, starts at a random
non-overlapping position with a random velocity (speed uniform in [0, ``init_speed``], uniform
direction); only the agent is pushed afterwards.

Physics at ``physics_hz`` (default 100 Hz): semi-implicit Euler with linear drag,
v += dt (F/m - drag v); p += dt v. After each substep collisions are resolved: ball-ball pairs
(impulse along the normal with restitution = mean of the two materials', overlap removed in
inverse-mass proportion), then walls (position clamped to [r, 1 - r], normal velocity reflected
and scaled by the ball's restitution). A collision with approach (normal) speed
>= ``min_impact_speed`` is an *event*: its time is interpolated inside the substep from the
penetration depth (so sound timing is finer than 1/physics_hz). Implementation: within each
action interval the force is constant, so the collision-free motion over k substeps is a linear
recurrence with a closed form; all substeps of an interval are computed at once (vectorised over
substeps x balls), checked for any collision at once, and the loop only steps through substeps
one at a time around a collision. The result equals the naive per-substep loop (up to float
rounding; tested).

Sound. Every event makes the ball(s) involved ring: a unit-peak modal tone
h(t) = sum_m amp_m exp(-t / tau_m) sin(2 pi f_m t), f_m = f0 * sqrt(R_REF / r) * ratio_m,
tau_m = tau / sqrt(ratio_m) (modes at or above 0.45 * sample_rate are dropped), starting at the
event time (rounded to the nearest sample), scaled by amplitude
A = gain * speed * r / R_REF = gain * speed * sqrt(m)  (gain 1 for walls, 0.7 per ball for a
ball-ball hit, where both balls ring). The waveform is the sum of all tones plus white noise
(uniform, std ``noise_std``), divided by the fixed constant :data:`AUDIO_SCALE` (not per clip, so
loudness is comparable across clips) and clipped to [-1, 1]. An isolated impact therefore peaks
at ~A / AUDIO_SCALE.

With the defaults (measured on 1000 clips): 3.3 collisions per clip (6% of clips silent, ~17%
of events ball-ball), median impact speed 0.47 box/s, balls move ~0.5 px per frame at 16x16
(95th percentile 1.5), clip audio peaks median 0.26, max 0.86 (no clipping). Actions are
informative: the rank correlation of a_t with the agent's next velocity change is ~0.68
(plain correlation ~0.84 over intervals without collisions; bounces dominate it otherwise).
Speed: ~700 clips/s in one process (one core) at the default (demo) size.

Schema of one clip (``simulate`` / ``WorldSource[i]``), with T = duration*fps,
T_a = duration*action_hz, S = duration*sample_rate, N = max_balls, E = max_events:
  "video":          float32 (T, H, W, 3), H = W = image_size, RGB in [-1, 1]; frame j shows the
                    state at time j / fps (background ~ -0.8, balls ~ material colour).
                    Anti-aliased discs; the agent has a brighter core.
  "audio":          float32 (S,) mono waveform in [-1, 1] at sample_rate, sample s at s / sr,
                    covering exactly [0, duration).
  "actions":        float32 (T_a, 2) in [-1, 1]; a_t acts during [t, t + 1) / action_hz.
  "proprio":        float32 (T_a, 4) agent (x, y, vx, vy) at time t / action_hz (before a_t);
                    x, y in [r_0, 1 - r_0], velocities in box units per second.
  "events":         float32 (E, 4) rows (time_s, speed, material_id, kind) sorted by time;
                    kind 0 = wall, 1 = ball-ball (material_id = material of the lower-index ball);
                    speed = normal approach speed (box units / s); rows >= num_events are -1.
  "num_events":     int32 scalar, = min(num_collisions, E).
  "num_collisions": int32 scalar, all events in the clip (all of them are audible, even past E).
  "num_balls":      int32 scalar in [min_balls, max_balls].
  "materials":      int32 (N,) material id per ball (ball 0 = agent), -1 for absent balls.
  "radii":          float32 (N,) radius per ball, 0 for absent balls.
Every array is a pure function of (config, seed, index): bit-identical in any process.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class Material:
    """One ball material: look (``color``, RGB in [0, 1]), bounce and sound."""

    name: str
    color: tuple[float, float, float]
    restitution: float
    pitch_hz: float  # fundamental for a ball of radius R_REF
    decay_s: float  # amplitude decay time constant of the fundamental
    mode_ratios: tuple[float, ...]
    mode_amps: tuple[float, ...]


MATERIALS: tuple[Material, ...] = (
    Material("wood", (0.82, 0.52, 0.22), 0.55, 800.0, 0.015, (1.0, 2.7), (1.0, 0.4)),
    Material("metal", (0.70, 0.78, 0.95), 0.75, 2200.0, 0.035, (1.0, 2.76, 5.4), (1.0, 0.5, 0.25)),
    Material("rubber", (0.20, 0.82, 0.30), 0.85, 300.0, 0.008, (1.0, 2.1), (1.0, 0.3)),
)
MATERIAL_NAMES: tuple[str, ...] = tuple(m.name for m in MATERIALS)
NUM_MATERIALS = len(MATERIALS)

R_REF = 0.09  # radius of a ball with mass 1 and pitch exactly Material.pitch_hz
AUDIO_SCALE = 3.0  # fixed divisor of the summed tones (peak of an isolated hit ~ A / 3)
WALL_GAIN, BALL_GAIN = 1.0, 0.7
TAIL_DECAYS = 6.0  # tones are cut after 6 decay times (exp(-6) = 0.25% of the peak)
EVENT_FIELDS = ("time_s", "speed", "material_id", "kind")
KIND_WALL, KIND_BALL = 0, 1

_RESTITUTION = np.array([m.restitution for m in MATERIALS])
_COLORS = np.array([m.color for m in MATERIALS], np.float32)
_MARGIN = 0.01  # min initial gap between balls


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Parameters of the world (see module docstring). ``action_hz=None`` means ``fps``."""

    image_size: int = 16
    duration: float = 1.6
    fps: int = 10
    sample_rate: int = 16000
    action_hz: int | None = None
    physics_hz: int = 100
    min_balls: int = 1
    max_balls: int = 3
    max_events: int = 32
    radius_range: tuple[float, float] = (0.06, 0.12)
    force_scale: float = 1.5
    drag: float = 1.0
    init_speed: float = 1.5
    policy_tau: float = 0.5
    policy_std: float = 0.6
    min_impact_speed: float = 0.05
    noise_std: float = 1e-3

    def __post_init__(self):
        if self.action_hz is None:
            object.__setattr__(self, "action_hz", self.fps)
        for name, low in (
            ("image_size", 4),
            ("fps", 1),
            ("sample_rate", 1000),
            ("action_hz", 1),
            ("physics_hz", 1),
            ("min_balls", 1),
            ("max_balls", 1),
            ("max_events", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"WorldConfig.{name} must be an integer >= {low}, got {value!r}")
        for name in (
            "duration",
            "force_scale",
            "drag",
            "init_speed",
            "policy_tau",
            "policy_std",
            "min_impact_speed",
            "noise_std",
        ):
            value = getattr(self, name)
            ok = isinstance(value, (int, float, np.number)) and math.isfinite(value)
            strict = name in ("duration", "policy_tau")
            if not ok or value < 0 or (strict and value == 0):
                raise ValueError(
                    f"WorldConfig.{name} must be a finite number {'> 0' if strict else '>= 0'}, got {value!r}"
                )
        for name in ("fps", "action_hz", "sample_rate", "physics_hz"):
            count = self.duration * getattr(self, name)
            if abs(count - round(count)) > 1e-6 * max(1.0, count):
                raise ValueError(
                    f"WorldConfig.duration * {name} must be a whole number, got "
                    f"duration={self.duration!r}, {name}={getattr(self, name)!r}"
                )
        for name in ("fps", "action_hz"):
            if self.physics_hz % getattr(self, name):
                raise ValueError(
                    f"WorldConfig.physics_hz must be a multiple of {name}="
                    f"{getattr(self, name)}, got {self.physics_hz!r}"
                )
        if self.min_balls > self.max_balls:
            raise ValueError(
                f"WorldConfig.min_balls must be <= max_balls={self.max_balls}, got {self.min_balls!r}"
            )
        radii = self.radius_range
        grid = math.ceil(math.sqrt(self.max_balls))  # fallback placement must fit
        if (
            not isinstance(radii, tuple)
            or len(radii) != 2
            or not all(isinstance(r, (int, float)) for r in radii)
            or not 0 < radii[0] <= radii[1] <= 0.5 / grid - _MARGIN
        ):
            raise ValueError(
                f"WorldConfig.radius_range must be a tuple (lo, hi) with "
                f"0 < lo <= hi <= {0.5 / grid - _MARGIN:.3f} for max_balls="
                f"{self.max_balls}, got {radii!r}"
            )

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def num_actions(self) -> int:
        return round(self.duration * self.action_hz)

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.sample_rate)

    @property
    def num_steps(self) -> int:
        return round(self.duration * self.physics_hz)


@functools.lru_cache(maxsize=16)
def _constants(config: WorldConfig) -> dict:
    """Per-config arrays reused by every clip (read-only)."""
    dt = 1.0 / config.physics_hz
    k = config.physics_hz // config.action_hz
    decay = 1.0 - config.drag * dt
    apow = decay ** np.arange(1, k + 1)  # a^j, j = 1..k
    cpow = np.cumsum(decay ** np.arange(k))  # sum_{i<j} a^i, j = 1..k
    # OU policy as one matrix: a = L @ eps, L[t, s] = rho^(t-s) c_s (c_0 stationary std).
    rho = math.exp(-1.0 / (config.action_hz * config.policy_tau))
    t = np.arange(config.num_actions)
    lag = t[:, None] - t[None, :]
    scale = np.full(len(t), config.policy_std * math.sqrt(1.0 - rho * rho))
    scale[0] = config.policy_std
    policy = np.where(lag >= 0, rho ** np.maximum(lag, 0), 0.0) * scale[None, :]
    pix = ((np.arange(config.image_size) + 0.5) / config.image_size).astype(np.float32)
    return dict(dt=dt, substeps=k, apow=apow[:, None, None], cpow=cpow[:, None, None], policy=policy, pix=pix)


def _resolve(p, v, p_prev, radii, inv_mass, restitution, t0, dt, min_speed, events):
    """Resolves the collisions after one substep in place; appends (time, speed, i, j) to events.

    p, v: (n, 2) post-substep positions and velocities; p_prev: (n, 2) positions before it;
    t0: time at the start of the substep; j = -1 for a wall hit.
    """
    n = len(radii)
    for i in range(n - 1):
        for j in range(i + 1, n):
            d = p[j] - p[i]
            dist = math.hypot(d[0], d[1])
            reach = radii[i] + radii[j]
            if dist >= reach:
                continue
            normal = d / dist if dist > 1e-12 else np.array([1.0, 0.0])
            approach = float((v[j] - v[i]) @ normal)
            w = inv_mass[i] + inv_mass[j]
            if approach < 0:
                e = 0.5 * (restitution[i] + restitution[j])
                impulse = -(1.0 + e) * approach / w
                v[i] -= impulse * inv_mass[i] * normal
                v[j] += impulse * inv_mass[j] * normal
                if -approach >= min_speed:
                    d0 = p_prev[j] - p_prev[i]
                    gap0 = math.hypot(d0[0], d0[1]) - reach
                    frac = gap0 / (gap0 + reach - dist) if gap0 > 0 else 0.0
                    events.append((t0 + frac * dt, -approach, i, j))
            overlap = reach - dist
            p[i] -= overlap * inv_mass[i] / w * normal
            p[j] += overlap * inv_mass[j] / w * normal
    lo = radii[:, None]
    hi = 1.0 - lo
    for i, ax in zip(*np.nonzero((p < lo) | (p > hi))):
        low_side = p[i, ax] < lo[i, 0]
        wall = lo[i, 0] if low_side else hi[i, 0]
        into = -v[i, ax] if low_side else v[i, ax]  # speed towards the wall
        if into > 0:
            v[i, ax] = -restitution[i] * v[i, ax]
            if into >= min_speed:
                travel = p_prev[i, ax] - p[i, ax]
                frac = (p_prev[i, ax] - wall) / travel if travel != 0 else 0.0
                events.append((t0 + min(max(frac, 0.0), 1.0) * dt, into, i, -1))
        p[i, ax] = wall


def _integrate(config, consts, p0, v0, radii, inv_mass, restitution, actions):
    """Runs the physics; returns positions P, velocities V (num_steps + 1, n, 2) and events."""
    n, dt, k = len(radii), consts["dt"], consts["substeps"]
    apow, cpow = consts["apow"], consts["cpow"]
    steps = config.num_steps
    P = np.empty((steps + 1, n, 2))
    V = np.empty((steps + 1, n, 2))
    P[0], V[0] = p0, v0
    lo = radii[:, None]
    hi = 1.0 - lo
    I, J = np.triu_indices(n, 1)
    reach2 = (radii[I] + radii[J]) ** 2
    events: list = []
    b = np.zeros((n, 2))
    step = 0
    for t in range(config.num_actions):
        b[0] = dt * config.force_scale * inv_mass[0] * actions[t]
        end = min((t + 1) * k, steps)
        while step < end:
            m = end - step
            vs = apow[:m] * V[step] + cpow[:m] * b  # closed-form velocities
            ps = P[step] + dt * np.cumsum(vs, axis=0)  # (m, n, 2)
            hit = ((ps < lo) | (ps > hi)).any(axis=(1, 2))
            if len(I):
                d = ps[:, I] - ps[:, J]
                hit |= ((d * d).sum(-1) < reach2).any(-1)
            if not hit.any():
                P[step + 1 : end + 1], V[step + 1 : end + 1] = ps, vs
                step = end
                break
            f = int(hit.argmax())  # first substep with contact
            P[step + 1 : step + 1 + f], V[step + 1 : step + 1 + f] = ps[:f], vs[:f]
            p, v = ps[f].copy(), vs[f].copy()
            _resolve(
                p,
                v,
                P[step + f],
                radii,
                inv_mass,
                restitution,
                (step + f) * dt,
                dt,
                config.min_impact_speed,
                events,
            )
            step += f + 1
            P[step], V[step] = p, v
    return P, V, events


def _place(rng, radii, n):
    """Non-overlapping initial centres inside the box: sequential rejection sampling from a fixed
    number of candidates drawn up front, with a grid fallback (always fits, see WorldConfig)."""
    cand = rng.uniform(0.0, 1.0, (len(radii), 64, 2))
    pos = np.empty((n, 2))
    for i in range(n):
        c = radii[i] + cand[i] * (1.0 - 2.0 * radii[i])
        ok = np.ones(len(c), bool)
        for j in range(i):
            ok &= np.hypot(*(c - pos[j]).T) >= radii[i] + radii[j] + _MARGIN
        if not ok.any():
            g = math.ceil(math.sqrt(n))
            idx = np.arange(n)
            return np.stack([(idx % g + 0.5) / g, (idx // g + 0.5) / g], axis=1)
        pos[i] = c[ok.argmax()]
    return pos


def _render(config, consts, positions, radii, colors, background):
    """(T, n, 2) positions -> float32 (T, H, W, 3) in [-1, 1]; vectorised over frames x balls."""
    pix, size = consts["pix"], config.image_size
    x = positions[..., 0, None, None].astype(np.float32)  # (T, n, 1, 1)
    y = positions[..., 1, None, None].astype(np.float32)
    dist = np.sqrt((pix[None, None, None, :] - x) ** 2 + (pix[None, None, :, None] - y) ** 2)
    r = radii.astype(np.float32)[None, :, None, None]
    alpha = np.clip(0.5 - (dist - r) * size, 0.0, 1.0)  # (T, n, H, W), 1-px AA edge
    core = 0.5 * np.clip(0.5 - (dist[:, 0] - 0.45 * r[:, 0]) * size, 0.0, 1.0)  # agent highlight
    img = np.broadcast_to(background, (len(positions), size, size, 3)).copy()
    for i in range(len(radii)):
        a = alpha[:, i, :, :, None]
        img += a * (colors[i] - img)
        if i == 0:
            img += core[..., None] * (1.0 - img)
    return img * 2.0 - 1.0


def _tones(config, radii, materials, balls):
    """Unit-peak modal tone per ball in ``balls``: dict ball -> float32 (L,) waveform."""
    sr = config.sample_rate
    out = {}
    for b in balls:
        mat = MATERIALS[materials[b]]
        ratios = np.array(mat.mode_ratios)
        freqs = mat.pitch_hz * math.sqrt(R_REF / radii[b]) * ratios
        amps = np.where(freqs < 0.45 * sr, np.array(mat.mode_amps), 0.0)
        taus = mat.decay_s / np.sqrt(ratios)
        t = np.arange(int(math.ceil(TAIL_DECAYS * mat.decay_s * sr)), dtype=np.float32) / sr
        h = (
            amps[:, None].astype(np.float32)
            * np.exp(-t / taus[:, None].astype(np.float32))
            * np.sin(np.float32(2 * np.pi) * freqs[:, None].astype(np.float32) * t)
        ).sum(0)
        out[b] = h / np.abs(h).max()
    return out


def _synthesise(config, rng, radii, materials, events):
    """Sum of impact tones (one or two per event) + noise, / AUDIO_SCALE, clipped; float32 (S,)."""
    sr, length = config.sample_rate, config.num_samples
    # Uniform white noise with std noise_std (4x cheaper to draw than Gaussian).
    noise = rng.random(length, dtype=np.float32) - np.float32(0.5)
    noise *= np.float32(config.noise_std * math.sqrt(12.0))
    if not events:
        return np.clip(noise / np.float32(AUDIO_SCALE), -1.0, 1.0)
    tones = _tones(config, radii, materials, sorted({b for e in events for b in e[2:] if b >= 0}))
    longest = max(len(h) for h in tones.values())
    wave = np.zeros(length + longest, np.float32)
    for time, speed, i, j in events:
        start = int(round(time * sr))
        if start >= length:
            continue
        for b, gain in ((i, WALL_GAIN),) if j < 0 else ((i, BALL_GAIN), (j, BALL_GAIN)):
            h = tones[b]
            wave[start : start + len(h)] += np.float32(gain * speed * radii[b] / R_REF) * h
    wave = wave[:length] + noise
    return np.clip(wave / np.float32(AUDIO_SCALE), -1.0, 1.0)


def simulate(config: WorldConfig, rng: np.random.Generator, *, return_state: bool = False) -> dict:
    """Simulates one clip; every random number comes from ``rng`` (drawn in a fixed order).

    Returns the dict described in the module docstring. With ``return_state=True`` it also has
    "positions" / "velocities": float64 (num_steps + 1, num_balls, 2), the state at every physics
    substep (index s = time s / physics_hz), for tests and probes.
    """
    consts = _constants(config)
    nmax = config.max_balls
    # Random draws, fixed order, always max_balls-sized so the stream layout does not depend on n.
    n = int(rng.integers(config.min_balls, config.max_balls + 1))
    radii_all = rng.uniform(*config.radius_range, nmax)
    mats_all = rng.integers(0, NUM_MATERIALS, nmax)
    color_jitter = rng.normal(0.0, 0.04, (nmax, 3))
    speed = rng.uniform(0.0, config.init_speed, nmax)
    heading = rng.uniform(0.0, 2 * np.pi, nmax)
    background = (0.06 + rng.uniform(0.0, 0.06, 3)).astype(np.float32)
    eps = rng.standard_normal((config.num_actions, 2))
    radii, materials = radii_all[:n], mats_all[:n]
    p0 = _place(rng, radii_all, n)

    v0 = (speed * np.stack([np.cos(heading), np.sin(heading)]))[:, :n].T
    actions = np.clip(consts["policy"] @ eps, -1.0, 1.0)
    inv_mass = (R_REF / radii) ** 2
    P, V, events = _integrate(config, consts, p0, v0, radii, inv_mass, _RESTITUTION[materials], actions)
    events.sort(key=lambda e: e[0])

    colors = np.clip(_COLORS[materials] + color_jitter[:n], 0.0, 1.0).astype(np.float32)
    frame_stride = config.physics_hz // config.fps
    video = _render(
        config, consts, P[: config.num_frames * frame_stride : frame_stride], radii, colors, background
    )
    audio = _synthesise(config, rng, radii, materials, events)

    act_stride = config.physics_hz // config.action_hz
    sel = slice(0, config.num_actions * act_stride, act_stride)
    proprio = np.concatenate([P[sel, 0], V[sel, 0]], axis=1)
    table = np.full((config.max_events, 4), -1.0, np.float32)
    kept = events[: config.max_events]
    if kept:
        table[: len(kept)] = [(t, s, materials[i], KIND_WALL if j < 0 else KIND_BALL) for t, s, i, j in kept]
    mats_out = np.full(nmax, -1, np.int32)
    mats_out[:n] = materials
    radii_out = np.zeros(nmax, np.float32)
    radii_out[:n] = radii
    out = {
        "video": video.astype(np.float32, copy=False),
        "audio": audio,
        "actions": actions.astype(np.float32),
        "proprio": proprio.astype(np.float32),
        "events": table,
        "num_events": np.int32(len(kept)),
        "num_collisions": np.int32(len(events)),
        "num_balls": np.int32(n),
        "materials": mats_out,
        "radii": radii_out,
    }
    if return_state:
        out["positions"], out["velocities"] = P, V
    return out


class WorldSource:
    """Grain random-access source of procedural-world clips (see module docstring).

    ``source[i]`` is ``simulate(config, np.random.default_rng([seed, i]))``: a pure function of
    (config, seed, i), fixed-shape arrays only.
    """

    def __init__(self, num_clips: int = 10_000, config: WorldConfig = WorldConfig(), seed: int = 0):
        if isinstance(num_clips, bool) or int(num_clips) != num_clips or num_clips < 1:
            raise ValueError(f"num_clips must be an integer >= 1, got {num_clips!r}")
        if not isinstance(config, WorldConfig):
            raise ValueError(f"config must be a WorldConfig, got {type(config).__name__}")
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_clips, self.config, self.seed = int(num_clips), config, int(seed)

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} out of range for WorldSource of length {self.num_clips}")
        return simulate(self.config, np.random.default_rng([self.seed, index]))

    def __repr__(self) -> str:
        return f"WorldSource(num_clips={self.num_clips}, config={self.config!r}, seed={self.seed})"
