r"""The time-coupled (a, h) block of ADMMiRNN: all pre-activations and states of a sample at once.

With the weights, the outputs ``o`` and the multipliers fixed, the (a, h) part of the augmented
Lagrangian couples every step with its neighbours (C1: ``a_t`` with ``h_{t-1}``; C2: ``a_t``
with ``h_t``; C3: ``h_t``, ``t in S``, with ``o_t``) and is separable over samples. The block
takes one Gauss-Newton step on it (:func:`sweep_coupled`): the minimiser of the subproblem with
the activation linearised at the current ``a``, backtracked on the true subproblem. The
linearised minimiser is computed by one of two exact solvers:

======================  ===============================================  ======================
solver                  work per sample                                  sequential scans
======================  ===============================================  ======================
output space (S={T})    ``C`` adjoints backward, one adjoint backward,    3
:func:`coupled_output   one forward (``2 (C + 2) T H^2`` FLOPs)
_solve`
conjugate gradients     ``k`` iterations of a forward and a backward     ``2 k + 1``
:func:`coupled_         scan (``4 k T H^2``); exact at ``k = C|S| + 1``
linearised_solve`
======================  ===============================================  ======================

Both minimise the same convex quadratic; the tests check them against each other and against a
dense solve in float64. Nothing here differentiates the loss: the backward scans run the
transpose of the *linearised* recurrence on the penalty terms.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from admm_jax.admm.linalg import spd_solve
from admm_jax.admm.problem import (
    ADMMConfig,
    Auxiliaries,
    Duals,
    Penalties,
    readout_states,
    shift_right,
)
from admm_jax.models.elman import activation_fn, input_projection

COUPLED_BACKTRACKS = 8  # step sizes 1, 1/2, ..., 1/128 of the coupled block


def activation_slope(a: jax.Array, cfg: ADMMConfig) -> jax.Array:
    """``f'(a)`` elementwise: ``1 - tanh(a)^2`` for tanh, ``[a > 0]`` for relu.

    >>> float(activation_slope(jnp.zeros(()), ADMMConfig()))
    1.0
    """
    if cfg.activation == "relu":
        return (a > 0).astype(a.dtype)
    return 1.0 - jnp.tanh(a) ** 2


class CoupledTerms(NamedTuple):
    """What the coupled block needs of the fixed blocks, computed once per call.

    u: ``U x_t + b - lam1_t/rho1``; w: ``o_t - c + lam3_t/rho3`` ``[N, |S|, C]``; fa, slope:
    ``f(a)``, ``f'(a)`` at the current ``a``; c1: ``a - W h_prev - u``, the scaled C1 residual
    at the current point.
    """

    u: jax.Array
    w: jax.Array
    fa: jax.Array
    slope: jax.Array
    c1: jax.Array


def coupled_terms(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                  cfg: ADMMConfig, c1: jax.Array | None = None) -> CoupledTerms:
    r"""The fixed blocks' terms of the coupled subproblem, computed once per call.

    .. math::
        u_t = U x_t + b - \lambda_{1,t}/\rho_1,\quad w_t = o_t - c + \lambda_{3,t}/\rho_3,
        \quad c_1 = a - W h_{t-1} - u_t

    Args:
      params, aux, duals, rho, inputs, cfg: as :func:`sweep_coupled`.
      c1: the scaled C1 residual when it is known without the ``W h_{t-1}`` product: at a
        forward pass of the weights (``a = U x + W h_prev + b``) it is ``lam1 / rho1``.

    Returns:
      :class:`CoupledTerms`.

    Examples:
      >>> from admm_jax.models.elman import elman_trace
      >>> p = {"U": jnp.ones((3, 2)), "W": 0.5 * jnp.eye(3), "b": jnp.zeros(3),
      ...      "V": jnp.ones((1, 3)), "c": jnp.zeros(1)}
      >>> x = jnp.ones((2, 4, 2))
      >>> aux = Auxiliaries(*elman_trace(p, x))
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> t = coupled_terms(p, aux, zero, Penalties(1.0, 1.0, 1.0), x, ADMMConfig())
      >>> float(jnp.abs(t.c1).max()) < 1e-6   # C1 holds at a forward pass
      True
    """
    f = activation_fn(cfg.activation)
    u = input_projection(params["U"], inputs) + params["b"] - duals.lam1 / rho.rho1
    if c1 is None:
        c1 = aux.a - shift_right(aux.h) @ params["W"].T - u
    return CoupledTerms(u=u, w=aux.o - params["c"] + duals.lam3 / rho.rho3, fa=f(aux.a),
                        slope=activation_slope(aux.a, cfg), c1=c1)


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def _linear_forward(W, d, inj):
    """``y_t = d_t * (W y_{t-1}) + inj_t`` from ``y_0 = 0``, and ``W y_{t-1}``; time-major."""
    def body(y, xs):
        d_t, in_t = xs
        wy = y @ W.T
        y = d_t * wy + in_t
        return y, (y, wy)

    return jax.lax.scan(body, jnp.zeros_like(inj[0]), (d, inj))[1]


def _linear_backward(W, d, e):
    """The transpose of :func:`_linear_forward`: ``g_t = e_t + W^T (d_{t+1} g_{t+1})``."""
    def body(carry, xs):  # carry: d_{t+1} * g_{t+1}
        d_t, e_t = xs
        g = e_t + carry @ W
        return d_t * g, g

    return jax.lax.scan(body, jnp.zeros_like(e[0]), (d, e), reverse=True)[1]


def _output_adjoint(V, y, w, rho3, cfg: ADMMConfig):
    """``rho3 V^T (V y_t - w_t)`` at the steps with an output, zero elsewhere (time-major;
    ``w = 0`` gives the linear part)."""
    if cfg.many_to_many:
        return rho3 * (y @ V.T - w) @ V
    return jnp.zeros_like(y).at[-1].set(rho3 * (y[-1] @ V.T - w[0]) @ V)


class _Step(NamedTuple):
    """The Gauss-Newton direction: ``da, dh`` and the change ``dc1`` of the C1 slack."""

    da: jax.Array
    dh: jax.Array
    dc1: jax.Array


def _control_form(aux: Auxiliaries, duals: Duals, rho: Penalties, t: CoupledTerms):
    """``kappa`` (the cost of a unit of ``eta``) and the current point's ``eta0``."""
    rho1, rho2 = rho.rho1, rho.rho2
    d = t.slope
    kappa = rho1 * rho2 / (rho1 + rho2 * d**2)
    # h(eta0) = h0: the current point's injection eta0 = D c1 + (h0 - f(a0) + lam2/rho2)
    eta0 = d * t.c1 + (aux.h - t.fa + duals.lam2 / rho2)
    return kappa, eta0


def _step_from_eta(params, rho: Penalties, t: CoupledTerms, eta, h, w_h_prev, aux):
    """The direction from the minimising ``eta``: ``eps = rho2 d eta / (rho1 + rho2 d^2)``,
    ``a = W h_prev + u + eps`` (``w_h_prev = W h_prev`` of the new states)."""
    d = t.slope
    eps = rho.rho2 * d * eta / (rho.rho1 + rho.rho2 * d**2)
    return _Step(da=w_h_prev + t.u + eps - aux.a, dh=h - aux.h, dc1=eps - t.c1)


def _cg_step(params, aux: Auxiliaries, duals: Duals, rho: Penalties, cfg: ADMMConfig,
             t: CoupledTerms, steps: int) -> _Step:
    rho3 = rho.rho3
    W, V = params["W"], params["V"]
    kappa, eta0 = _control_form(aux, duals, rho, t)
    d_tm, k_tm, w_tm = _time_major(t.slope), _time_major(kappa), _time_major(t.w)

    def hess(p):  # (K + rho3 L^T P^T V^T V P L) p, and L p
        q = _linear_forward(W, d_tm, p)[0]
        out = _output_adjoint(V, q, jnp.zeros_like(w_tm), rho3, cfg)
        return k_tm * p + _linear_backward(W, d_tm, out), q

    def dot(x, y):  # per sample
        return jnp.sum(x * y, axis=(0, 2))

    def safe_div(num, den):
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)[:, None]

    x, y = _time_major(eta0), _time_major(aux.h)
    r = -(k_tm * x + _linear_backward(W, d_tm, _output_adjoint(V, y, w_tm, rho3, cfg)))
    z = r / k_tm

    def cg(carry, _):
        x, y, r, p, rz = carry
        hp, lp = hess(p)
        alpha = safe_div(rz, dot(p, hp))
        x, y, r = x + alpha * p, y + alpha * lp, r - alpha * hp
        z = r / k_tm
        rz_new = dot(r, z)
        return (x, y, r, z + safe_div(rz_new, rz) * p, rz_new), None

    (x, y, _, _, _), _ = jax.lax.scan(cg, (x, y, r, z, dot(r, z)), None, length=steps)
    eta, h = _time_major(x), _time_major(y)
    return _step_from_eta(params, rho, t, eta, h, shift_right(h) @ W.T, aux)


def _exact_cg_steps(aux: Auxiliaries) -> int:
    """``C |S| + 1``: where conjugate gradients are exact."""
    return aux.o.shape[1] * aux.o.shape[2] + 1


def _output_space_step(params, aux: Auxiliaries, duals: Duals, rho: Penalties,
                       t: CoupledTerms) -> _Step:
    rho3 = rho.rho3
    W, V = params["W"], params["V"]
    kappa, eta0 = _control_form(aux, duals, rho, t)
    d_tm, kinv = _time_major(t.slope), 1.0 / _time_major(kappa)
    eta0_tm = _time_major(eta0)

    # one backward scan with C adjoint vectors G_t = d(V h_T)/d(eta_t) (G_T = V,
    # G_{t-1} = G_t diag(d_t) W), accumulating the C x C system
    # (I / rho3 + sum_t G_t K_t^-1 G_t^T) mu = r and its right side; G is not stored (a
    # [T, N, C, H] stack cost more than the scan). The contractions are elementwise products
    # and sums: XLA's CPU batched products of [C, H] blocks per sample were several times slower
    def back(carry, xs):
        g, s, r = carry
        d_t, kinv_t, eta0_t = xs
        gk = g * kinv_t[:, None, :]
        s = s + jnp.sum(gk[:, :, None, :] * g[:, None, :, :], axis=-1)
        r = r + jnp.sum(g * eta0_t[:, None, :], axis=-1)
        return ((g * d_t[:, None, :]) @ W, s, r), None

    n, classes = aux.h.shape[0], V.shape[0]
    e0 = t.w[:, 0] - aux.h[:, -1] @ V.T  # the output residual at the current point
    init = (jnp.broadcast_to(V, (n, classes, V.shape[1])),
            jnp.broadcast_to(jnp.eye(classes, dtype=e0.dtype) / rho3, (n, classes, classes)),
            e0)
    (_, s, r), _ = jax.lax.scan(back, init, (d_tm, kinv, eta0_tm), reverse=True)
    mu = jax.vmap(spd_solve)(s, r[..., None])[..., 0]

    # eta_t = K_t^-1 G_t^T mu: one backward scan of the single adjoint V^T mu
    def adjoint(g, xs):
        d_t, kinv_t = xs
        return (g * d_t) @ W, kinv_t * g

    _, eta_tm = jax.lax.scan(adjoint, mu @ V, (d_tm, kinv), reverse=True)
    # one forward scan: the states' change L (eta - eta0) and W times its previous step
    dh_tm, w_dh_prev_tm = _linear_forward(W, d_tm, eta_tm - eta0_tm)
    dh, w_dh_prev = _time_major(dh_tm), _time_major(w_dh_prev_tm)
    w_h0_prev = aux.a - t.u - t.c1  # W h0_{t-1}, from the definition of c1
    return _step_from_eta(params, rho, t, _time_major(eta_tm), aux.h + dh,
                          w_h0_prev + w_dh_prev, aux)


def _linearised_step(params, aux, duals, rho, cfg: ADMMConfig, t: CoupledTerms) -> _Step:
    """The exact or truncated minimiser of the linearised subproblem, as a direction:
    ``cg_steps=None`` is exact (the output space when ``S = {T}``, else ``C|S| + 1``
    conjugate-gradient iterations); an int runs that many (at most ``C|S| + 1``)."""
    exact = _exact_cg_steps(aux)
    if cfg.cg_steps is None and not cfg.many_to_many:
        return _output_space_step(params, aux, duals, rho, t)
    steps = exact if cfg.cg_steps is None else min(cfg.cg_steps, exact)
    return _cg_step(params, aux, duals, rho, cfg, t, steps)


def coupled_output_solve(params, aux: Auxiliaries, duals: Duals, rho: Penalties,
                         inputs: jax.Array, cfg: ADMMConfig, terms: CoupledTerms | None = None):
    r"""Minimise the linearised (a, h) subproblem of a many-to-one RNN exactly, in the
    ``C``-dimensional output space: one backward scan with ``C`` adjoints, one forward scan.

    In the control form of :func:`coupled_linearised_solve` the subproblem is
    ``min_eta sum_t 1/2 eta_t' K_t eta_t + rho3/2 |V h_T(eta) - w|^2`` with ``h`` affine in
    ``eta``. With ``G_t = d(V h_T)/d eta_t`` (``G_T = V``, ``G_{t-1} = G_t D_t W``) and the
    output residual ``r = w - V h_T(eta^0) + sum_t G_t eta^0_t``, the minimiser is (push-through
    identity)

    .. math::
        \eta_t = K_t^{-1} G_t^\top \mu, \qquad
        \Big(\tfrac{1}{\rho_3} I + \sum_t G_t K_t^{-1} G_t^\top\Big)\mu = r,

    a ``C x C`` SPD solve per sample. The ``G_t`` come from one backward scan of ``[N C, H] x
    [H, H]`` products; the states ``h = h^0 + L (\eta - \eta^0)`` from one forward scan.
    FLOPs per sample: ``2 C T H^2`` (adjoints) ``+ 2 T H^2`` (states) ``+ 3 T C^2 H``
    (the system and ``eta``), against ``4 T H^2`` per conjugate-gradient iteration, of which
    ``C + 1`` are needed for the same answer.

    Args:
      params: ``U, W, b, V, c``.
      aux: the current ``a, h [N, T, H]`` (the linearisation point) and ``o [N, 1, C]``.
      duals, rho: multipliers and penalties.
      inputs: ``[N, T, D]`` or token ids ``[N, T]``.
      cfg: ``activation``; ``many_to_many`` must be False.
      terms: precomputed :func:`coupled_terms`.

    Returns:
      ``(a, h)``, both ``[N, T, H]``: the minimiser of the linearised subproblem.

    Raises:
      ValueError: ``cfg.many_to_many`` (the output space is ``C T``-dimensional there: use
        :func:`coupled_linearised_solve`).

    Examples:
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x = jax.random.normal(k[2], (3, 5, 2))
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)   # the outputs should rise by 1
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> rho, cfg = Penalties(1.0, 10.0, 1.0), ADMMConfig(loss="mse")
      >>> a, h = coupled_output_solve(p, aux, zero, rho, x, cfg)
      >>> a2, h2 = coupled_linearised_solve(p, aux, zero, rho, x, cfg)  # CG, C + 1 = 2 steps
      >>> bool(jnp.allclose(h, h2, atol=1e-5))
      True

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed., sec. 10.3 (Gauss-Newton); the
      push-through (Woodbury) identity: Henderson & Searle, SIAM Review 23(1), 1981.
    """
    if cfg.many_to_many:
        raise ValueError("cfg: coupled_output_solve needs S = {T} (many_to_many=False); the "
                         "many-to-many output space has C T dimensions")
    t = coupled_terms(params, aux, duals, rho, inputs, cfg) if terms is None else terms
    s = _output_space_step(params, aux, duals, rho, t)
    return aux.a + s.da, aux.h + s.dh


def coupled_linearised_solve(params, aux: Auxiliaries, duals: Duals, rho: Penalties,
                             inputs: jax.Array, cfg: ADMMConfig,
                             terms: CoupledTerms | None = None):
    r"""Minimise the (a, h) subproblem with ``f`` linearised at the current ``a``: all steps
    jointly, by preconditioned conjugate gradients (``cfg.cg_steps``; ``None``: ``C|S| + 1``).

    With ``D_t = diag f'(a^0_t)`` and ``f(a_t) ~ f(a^0_t) + D_t (a_t - a^0_t)`` the (a, h) part
    of the augmented Lagrangian becomes the quadratic

    .. math::
        Q(a, h) = \sum_t \tfrac{\rho_1}{2}|a_t - W h_{t-1} - u_t|^2
        + \tfrac{\rho_2}{2}|h_t - D_t a_t - v_t|^2 + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t - w_t|^2

    with ``u_t = U x_t + b - lam1_t/rho1``, ``v_t = f(a^0_t) - D_t a^0_t - lam2_t/rho2``,
    ``w_t = o_t - c + lam3_t/rho3``: block-tridiagonal in time. Its slacks
    ``eps_t = a_t - W h_{t-1} - u_t`` and ``del_t = h_t - D_t a_t - v_t`` enter the states only
    through ``eta_t = D_t eps_t + del_t``: ``h_t = D_t W h_{t-1} + D_t u_t + v_t + eta_t``.
    Minimising over the split of each ``eta_t`` (elementwise,
    ``eps = rho2 d eta / (rho1 + rho2 d^2)``) leaves a linear-quadratic control problem

    .. math::
        \min_\eta \sum_t \tfrac12 \eta_t^\top K_t \eta_t
        + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t(\eta) - w_t|^2, \qquad
        K_t = \mathrm{diag}\frac{\rho_1\rho_2}{\rho_1 + \rho_2 d_t^2},

    whose Hessian ``K + rho3 L^T P^T V^T V P L`` (``L`` the lower block-triangular map
    ``eta -> h``, ``P`` the selection of ``t in S``) is ``K`` plus a term of rank
    ``<= C |S|``. Conjugate gradients preconditioned by ``K``, per sample and from the current
    point, are therefore exact after ``C |S| + 1`` iterations in exact arithmetic, whatever
    ``T``; more are never run. Each iteration is one forward scan (``L p``) and one backward
    scan (``L^T``) of ``[N, H] x [H, H]`` products: ``4 T H^2`` FLOPs per sample.

    Args:
      params: ``U, W, b, V, c``.
      aux: the current ``a, h [N, T, H]`` (the linearisation point) and ``o``.
      duals, rho: multipliers and penalties.
      inputs: ``[N, T, D]`` or token ids.
      cfg: ``cg_steps``, ``activation``, ``many_to_many``.
      terms: precomputed :func:`coupled_terms`.

    Returns:
      ``(a, h)``, both ``[N, T, H]``: the minimiser of ``Q`` after the CG iterations.

    Examples:
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x = jax.random.normal(k[2], (3, 5, 2))
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)   # the outputs should rise by 1
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> a, h = coupled_linearised_solve(p, aux, zero, Penalties(1.0, 10.0, 1.0), x,
      ...                                 ADMMConfig(loss="mse", many_to_many=False))
      >>> bool(jnp.all(jnp.abs(a - tr.a).sum(-1) > 0))   # every step of every sample moved
      True

    References:
      Gauss-Newton on the activation, conjugate gradients: Nocedal & Wright, "Numerical
      Optimization", 2nd ed., ch. 5 and 10.3; the splitting: Tang et al., ECML-PKDD 2020.
    """
    t = coupled_terms(params, aux, duals, rho, inputs, cfg) if terms is None else terms
    exact = _exact_cg_steps(aux)
    steps = exact if cfg.cg_steps is None else min(cfg.cg_steps, exact)
    s = _cg_step(params, aux, duals, rho, cfg, t, steps)
    return aux.a + s.da, aux.h + s.dh


def sweep_coupled(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                  cfg: ADMMConfig, terms: CoupledTerms | None = None) -> Auxiliaries:
    r"""The time-coupled (a, h) block: one backtracked Gauss-Newton step on all ``a_t, h_t`` of
    every sample, so one ADMM iteration carries the loss signal through all ``T`` steps.

    With the weights, ``o`` and the multipliers fixed, it decreases

    .. math::
        \sum_t \tfrac{\rho_1}{2}|a_t - W h_{t-1} - u_t|^2
        + \tfrac{\rho_2}{2}|h_t - f(a_t) + \lambda_{2,t}/\rho_2|^2
        + \sum_{t\in S}\tfrac{\rho_3}{2}|V h_t - w_t|^2

    (separable over samples) in two stages:

    1. the minimiser ``(a*, h*)`` of the subproblem with ``f`` linearised at the current ``a``:
       in the output space for ``S = {T}`` with ``cfg.cg_steps=None``
       (:func:`coupled_output_solve`), else by conjugate gradients
       (:func:`coupled_linearised_solve`);
    2. per sample, ``(a, h) + s ((a*, h*) - (a, h))`` with the largest
       ``s in {1, 1/2, ..., 1/128}`` that does not increase the *true* subproblem, else
       ``s = 0``. The linearised model is convex, has the true value and gradient at the
       current point, and ``(a*, h*)`` lowers it, so the direction descends and a small enough
       ``s`` exists (in exact arithmetic). Along the segment C1 and C3 are affine in ``s``;
       only ``f(a)`` is re-evaluated per candidate, and candidates stop as soon as every
       sample has its step (usually after ``s = 1``).

    No step increases the augmented Lagrangian.

    Args:
      params, aux, duals, rho, inputs, cfg: as :func:`coupled_linearised_solve`.
      terms: precomputed :func:`coupled_terms`.

    Returns:
      The auxiliaries with the new ``a, h`` (``o`` unchanged).

    Examples:
      >>> from admm_jax.admm.problem import augmented_lagrangian
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x, y = jax.random.normal(k[2], (3, 5, 2)), jnp.ones((3, 1))
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> rho, cfg = Penalties(1.0, 10.0, 1.0), ADMMConfig(loss="mse")
      >>> new = sweep_coupled(p, aux, zero, rho, x, cfg)
      >>> bool(augmented_lagrangian(p, new, zero, rho, x, y, cfg)
      ...      < augmented_lagrangian(p, aux, zero, rho, x, y, cfg))
      True

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020 (the splitting); Nocedal & Wright, "Numerical
      Optimization", 2nd ed., sec. 3.1 (backtracking) and 10.3 (Gauss-Newton).
    """
    return coupled_step(params, aux, duals, rho, inputs, cfg, terms)[0]


def coupled_step(params, aux: Auxiliaries, duals: Duals, rho: Penalties, inputs: jax.Array,
                 cfg: ADMMConfig, terms: CoupledTerms | None = None):
    r"""The coupled block's step (:func:`sweep_coupled`) and the scaled C1 slack of its result.

    .. math::
        c_1 = a - W h_{t-1} - u_t = c_1^0 + s\,(\epsilon - c_1^0)

    along the backtracked segment (``eps`` the linearised minimiser's slack), so the multiplier
    step needs no other ``W h_{t-1}`` product.

    Args:
      params, aux, duals, rho, inputs, cfg: as :func:`sweep_coupled`.
      terms: precomputed :func:`coupled_terms`.

    Returns:
      ``(aux, c1)``: the new auxiliaries and ``c1 [N, T, H]``; the C1 residual is
      ``c1 - lam1 / rho1``.

    Examples:
      >>> from admm_jax.admm.problem import residuals
      >>> from admm_jax.models.elman import elman_trace
      >>> k = jax.random.split(jax.random.key(0), 3)
      >>> p = {"U": jax.random.normal(k[0], (4, 2)), "W": 0.5 * jnp.eye(4), "b": jnp.zeros(4),
      ...      "V": jax.random.normal(k[1], (1, 4)), "c": jnp.zeros(1)}
      >>> x = jax.random.normal(k[2], (3, 5, 2))
      >>> tr = elman_trace(p, x)
      >>> aux = Auxiliaries(tr.a, tr.h, tr.o + 1.0)
      >>> zero = Duals(*(jnp.zeros_like(v) for v in aux))
      >>> cfg = ADMMConfig(loss="mse")
      >>> new, c1 = coupled_step(p, aux, zero, Penalties(1.0, 10.0, 1.0), x, cfg)
      >>> bool(jnp.allclose(c1, residuals(p, new, x, cfg).r1, atol=1e-5))
      True

    References:
      Tang et al., "ADMMiRNN", ECML-PKDD 2020 (the splitting).
    """
    f = activation_fn(cfg.activation)
    t = coupled_terms(params, aux, duals, rho, inputs, cfg) if terms is None else terms
    step = _linearised_step(params, aux, duals, rho, cfg, t)
    c3_0 = readout_states(aux.h, cfg) @ params["V"].T - t.w
    dc3 = readout_states(step.dh, cfg) @ params["V"].T
    off2 = duals.lam2 / rho.rho2

    def value(s, fa):
        c2 = aux.h + s * step.dh - fa + off2
        return 0.5 * (rho.rho1 * jnp.sum((t.c1 + s * step.dc1) ** 2, axis=(1, 2))
                      + rho.rho2 * jnp.sum(c2**2, axis=(1, 2))
                      + rho.rho3 * jnp.sum((c3_0 + s * dc3) ** 2, axis=(1, 2)))

    base = value(0.0, t.fa)

    def cond(carry):
        j, chosen = carry
        return (j < COUPLED_BACKTRACKS) & jnp.any(chosen < 0)

    def body(carry):
        j, chosen = carry
        s = 0.5 ** j.astype(base.dtype)
        ok = (chosen < 0) & (value(s, f(aux.a + s * step.da)) <= base)
        return j + 1, jnp.where(ok, s, chosen)

    _, chosen = jax.lax.while_loop(cond, body, (0, -jnp.ones_like(base)))
    s = jnp.maximum(chosen, 0.0)[:, None, None]
    new = aux._replace(a=aux.a + s * step.da, h=aux.h + s * step.dh)
    return new, t.c1 + s * step.dc1


__all__ = ["COUPLED_BACKTRACKS", "CoupledTerms", "activation_slope", "coupled_linearised_solve",
           "coupled_output_solve", "coupled_step", "coupled_terms", "sweep_coupled"]
