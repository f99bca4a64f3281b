r"""The (h, a) blocks of ADMMiRNN one time step at a time, and the sweeps over them.

With ``a_{t+1}`` held fixed the h-block is separable over ``t`` and ``n`` (one shared
``H x H`` factorisation); the a-block is elementwise. :func:`sweep_backward` runs them
Gauss-Seidel backward in time in one ``lax.scan`` (the loss signal reaches every step,
attenuated by at most 1/4 per step); :func:`sweep_parallel` solves all ``h_t`` and then all
``a_t`` at once (one step per iteration). The default iteration solves ``(a, h)`` jointly over
time instead (:mod:`admm_jax.admm.coupled`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from admm_jax.admm.linalg import spd_inverse
from admm_jax.admm.problem import ADMMConfig, Auxiliaries, Duals, Penalties, shift_right
from admm_jax.models.elman import activation_fn, input_projection


def _h_inverses(params, rho: Penalties, cfg: ADMMConfig):
    """Inverses of the h-block matrices for steps ``t < T`` and for the last step.

    Both are ``rho2 I`` plus positive semidefinite terms, so they are well conditioned
    (eigenvalues >= rho2); one inverse each (:mod:`admm_jax.admm.linalg`), then every step's
    solve is a matrix product.
    """
    W, V = params["W"], params["V"]
    eye = jnp.eye(W.shape[0], dtype=W.dtype)
    vtv = rho.rho3 * V.T @ V
    mid = rho.rho2 * eye + rho.rho1 * W.T @ W + (vtv if cfg.many_to_many else 0.0)
    last = rho.rho2 * eye + vtv
    return spd_inverse(mid), spd_inverse(last)


def _h_rhs_base(params, aux, duals, rho, inputs, cfg):
    """The h-block right-hand side except the term ``rho1 W^T a_{t+1}``.

    ``rho2 f(a_t) - lam2_t + rho1 W^T(-U x_{t+1} - b + lam1_{t+1}/rho1)[t<T]
    + rho3 V^T(o_t - c + lam3_t/rho3)[t in S]``, ``[N, T, H]``.
    """
    f = activation_fn(cfg.activation)
    V, c, W = params["V"], params["c"], params["W"]
    base = rho.rho2 * f(aux.a) - duals.lam2
    out_term = (rho.rho3 * (aux.o - c) + duals.lam3) @ V
    base = base + out_term if cfg.many_to_many else base.at[:, -1:].add(out_term)
    nxt = duals.lam1 - rho.rho1 * (input_projection(params["U"], inputs) + params["b"])
    return base.at[:, :-1].add(nxt[:, 1:] @ W)


def h_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Exact minimiser over all ``h_t`` at once, with every ``a`` (and ``o``) fixed.

    .. math::
        (\rho_2 I + \rho_1 W^\top W [t<T] + \rho_3 V^\top V [t\in S])\, h_t =
        \rho_2 f(a_t) - \lambda_{2,t} + \rho_1 W^\top(a_{t+1} - U x_{t+1} - b
        + \lambda_{1,t+1}/\rho_1)[t<T] + \rho_3 V^\top(o_t - c + \lambda_{3,t}/\rho_3)[t\in S]

    The problem is separable over ``t`` and ``n`` because ``a_{t+1}`` is held fixed: one
    shared ``H x H`` factorisation per matrix.
    """
    mid_inv, last_inv = _h_inverses(params, rho, cfg)
    rhs = _h_rhs_base(params, aux, duals, rho, inputs, cfg)
    rhs = rhs.at[:, :-1].add(rho.rho1 * aux.a[:, 1:] @ params["W"])
    return jnp.concatenate([rhs[:, :-1] @ mid_inv, rhs[:, -1:] @ last_inv], axis=1)


def a_block(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
            cfg: ADMMConfig) -> jax.Array:
    r"""Minimise, entry by entry, ``g(a) = rho1/2 (a - u)^2 + rho2/2 (v - f(a))^2``.

    With ``u = U x_t + W h_{t-1} + b - lam1/rho1`` and ``v = h_t + lam2/rho2``: all steps at
    once (``h`` fixed). See :func:`solve_a` for the solvers.
    """
    z = input_projection(params["U"], inputs) + shift_right(aux.h) @ params["W"].T + params["b"]
    return solve_a(aux.a, z - duals.lam1 / rho.rho1, aux.h + duals.lam2 / rho.rho2, rho, cfg)


TANH_CURVATURE = 4.0 / (3.0 * 3.0**0.5)  # max |d^2 tanh / da^2| = max 2|tanh a| sech^2 a


def a_curvature_bound(v, rho: Penalties):
    """Upper bound ``Lc`` of ``g''`` for tanh: ``rho1 + rho2 (1 + 0.7698 (|v| + 1))``."""
    return rho.rho1 + rho.rho2 * (1.0 + TANH_CURVATURE * (jnp.abs(v) + 1.0))


def solve_a(a0, u, v, rho: Penalties, cfg: ADMMConfig) -> jax.Array:
    r"""Elementwise ``argmin_a g(a) = rho1/2 (a - u)^2 + rho2/2 (v - f(a))^2``.

    relu: exact, the better of the two one-sided minimisers ``min(u, 0)`` and
    ``max((rho1 u + rho2 v)/(rho1 + rho2), 0)``.

    tanh (nonconvex): ``a_steps`` iterations from ``a0``, each taking the better of two
    candidates: the Newton step ``-g'/g''`` where ``g''`` is safely positive, else the
    Gauss-Newton step ``-g'/(rho1 + rho2 f'^2)`` (fast near a minimum), and the
    majorisation step ``-g'/Lc`` with ``Lc >= sup g''`` (:func:`a_curvature_bound`), which by
    the descent lemma guarantees ``g(a+) <= g(a) - g'(a)^2 / (2 Lc)``. So every iteration
    meets that sufficient decrease and ``g`` never increases.
    """
    rho1, rho2 = rho.rho1, rho.rho2
    if cfg.activation == "relu":
        neg = jnp.minimum(u, 0.0)
        pos = jnp.maximum((rho1 * u + rho2 * v) / (rho1 + rho2), 0.0)

        def g_relu(a):
            return 0.5 * rho1 * (a - u) ** 2 + 0.5 * rho2 * (v - jax.nn.relu(a)) ** 2

        return jnp.where(g_relu(pos) <= g_relu(neg), pos, neg)

    lc = a_curvature_bound(v, rho)

    def g(a):
        return 0.5 * rho1 * (a - u) ** 2 + 0.5 * rho2 * (v - jnp.tanh(a)) ** 2

    def step(a, _):
        t = jnp.tanh(a)
        dt = 1.0 - t**2
        grad = rho1 * (a - u) - rho2 * (v - t) * dt
        curv = rho1 + rho2 * (dt**2 + 2.0 * (v - t) * t * dt)  # exact g''
        curv = jnp.where(curv > 0.1 * rho1, curv, rho1 + rho2 * dt**2)  # else Gauss-Newton
        newton = a - grad / curv
        mm = a - grad / lc
        return jnp.where(g(newton) <= g(mm), newton, mm), None

    a, _ = jax.lax.scan(step, a0, None, length=cfg.a_steps)
    return a


def sweep_backward(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                   cfg: ADMMConfig) -> Auxiliaries:
    r"""Gauss-Seidel over ``h_T, a_T, h_{T-1}, a_{T-1}, ..., h_1, a_1`` in one ``lax.scan``.

    Each ``h_t`` is solved exactly given the ``a_{t+1}`` just updated, and each ``a_t`` given
    the new ``h_t`` and the old ``h_{t-1}``: the loss signal reaches every step in one sweep.
    Everything that does not depend on the sweep's own results is computed for all steps at
    once beforehand; the scan body is two ``[N, H] x [H, H]`` products and the a-solver.
    """
    W = params["W"]
    mid_inv, last_inv = _h_inverses(params, rho, cfg)
    base = _h_rhs_base(params, aux, duals, rho, inputs, cfg)
    u = (input_projection(params["U"], inputs) + shift_right(aux.h) @ W.T + params["b"]
         - duals.lam1 / rho.rho1)
    v_off = duals.lam2 / rho.rho2

    def solve_step(rhs, inv, a_old, u_t, v_off_t):
        h_t = rhs @ inv
        return solve_a(a_old, u_t, h_t + v_off_t, rho, cfg), h_t

    a_last, h_last = solve_step(base[:, -1], last_inv, aux.a[:, -1], u[:, -1], v_off[:, -1])

    def body(a_next, xs):
        base_t, a_old, u_t, v_off_t = xs
        a_t, h_t = solve_step(base_t + rho.rho1 * a_next @ W, mid_inv, a_old, u_t, v_off_t)
        return a_t, (a_t, h_t)

    xs = tuple(jnp.swapaxes(arr[:, :-1], 0, 1) for arr in (base, aux.a, u, v_off))
    _, (a, h) = jax.lax.scan(body, a_last, xs, reverse=True)
    a = jnp.concatenate([jnp.swapaxes(a, 0, 1), a_last[:, None]], axis=1)
    h = jnp.concatenate([jnp.swapaxes(h, 0, 1), h_last[:, None]], axis=1)
    return aux._replace(a=a, h=h)


def sweep_parallel(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                   cfg: ADMMConfig) -> Auxiliaries:
    """All ``h_t`` at once (:func:`h_block`), then all ``a_t`` at once (:func:`a_block`)."""
    aux = aux._replace(h=h_block(params, aux, duals, rho, inputs, cfg))
    return aux._replace(a=a_block(params, aux, duals, rho, inputs, cfg))


__all__ = ["TANH_CURVATURE", "a_block", "a_curvature_bound", "h_block", "solve_a",
           "sweep_backward", "sweep_parallel"]
