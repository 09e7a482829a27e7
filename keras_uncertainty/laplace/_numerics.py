"""The numpy side of the Laplace approximation (float64).

Last-layer parameters are the Dense layer's kernel with its bias as one
more row, `W~ (d + 1, k)`, flattened row-major: parameter `i * k + c` is
`W~[i, c]`, so the Jacobian of output c for features `phi~ = [phi, 1]` is
`phi~ (x) e_c` and the generalized Gauss-Newton (GGN) matrix is
`sum_n kron(phi~_n phi~_n^T, Lambda_n)`, `Lambda_n` the Hessian of the
negative log-likelihood in the outputs.

Every Hessian is held in eigen form, `H = s * Q diag(lam) Q^T`, with `s` the
noise precision `1 / sigma^2` of homoscedastic regression (1 otherwise), so
that the posterior precision `s H + delta I` (`delta` the prior precision)
is diagonal in the same basis whatever `s` and `delta`: changing them costs
nothing, and the marginal likelihood is a sum over `lam`.
"""

import numpy as np

from keras_uncertainty.sampling.formulas import log_softmax

# Rows per chunk of the vectorized contractions: bounds temporaries to about
# 2^23 floats (64 MiB).
_CHUNK_FLOATS = 2**23


def chunks(rows, floats_per_row):
    """`(start, stop)` pairs covering `rows`, each within `_CHUNK_FLOATS`."""
    step = max(1, _CHUNK_FLOATS // max(1, int(floats_per_row)))
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def augment(phi, use_bias):
    """`[phi, 1]` (the bias as a last feature) when the layer has a bias."""
    if not use_bias:
        return phi
    return np.concatenate([phi, np.ones((phi.shape[0], 1), phi.dtype)], axis=1)


def softmax(z):
    """`exp(log_softmax(z))` (`formulas.log_softmax`, the one log-softmax)."""
    return np.exp(log_softmax(z))


def output_hessians(likelihood, z, precision=None):
    """`Lambda_n (N, k, k)`: the NLL's Hessian in the outputs at the MAP,
    with unit noise precision for homoscedastic regression (`precision`
    None), `diag(precision_n)` for a variance head, `diag(p) - p p^T` for
    classification."""
    n, k = z.shape
    if likelihood == "classification":
        p = softmax(z)
        return p[:, :, None] * np.eye(k)[None] - p[:, :, None] * p[:, None, :]
    if precision is None:
        return np.broadcast_to(np.eye(k), (n, k, k))
    return precision[:, :, None] * np.eye(k)[None]


class Eigen:
    """A symmetric PSD matrix in eigen form (see the module docstring).

    Attributes:
        structure: "full", "kron", "diag" or "blocks".
        eigenvalues: `(P,)`, in the parameter layout of `factors`.
        factors: "full": `(Q,)`, Q `(P, P)`; "kron": `(U_A, U_G)` with
            `Q = kron(U_A, U_G)`; "diag": `()` (Q = I); "blocks" (all-layer
            KFAC): Q block-diagonal over consecutive parameter ranges,
            `((start, stop, U_A, U_G), ...)` with `U_A`, `U_G` None for a
            range held diagonally (Q = I there).
    """

    def __init__(self, structure, eigenvalues, factors):
        self.structure = structure
        self.eigenvalues = np.maximum(np.asarray(eigenvalues, np.float64), 0.0)
        self.factors = tuple(factors)

    @classmethod
    def from_matrix(cls, matrix):
        lam, q = np.linalg.eigh((matrix + matrix.T) / 2)
        return cls("full", lam, (q,))

    @classmethod
    def from_kron(cls, left, right):
        a, u_a = np.linalg.eigh((left + left.T) / 2)
        g, u_g = np.linalg.eigh((right + right.T) / 2)
        a, g = np.maximum(a, 0.0), np.maximum(g, 0.0)
        return cls("kron", np.outer(a, g).ravel(), (u_a, u_g))

    @classmethod
    def from_diagonal(cls, diagonal):
        return cls("diag", np.ravel(diagonal), ())

    def to_state(self):
        return {
            "structure": self.structure,
            "eigenvalues": self.eigenvalues,
            "factors": self.factors,
        }

    @classmethod
    def from_state(cls, state):
        return cls(state["structure"], state["eigenvalues"], state["factors"])

    def dense(self, values):
        """`Q diag(values) Q^T` as a dense `(P, P)` matrix."""
        if self.structure == "diag":
            return np.diag(values)
        q = self.basis()
        return (q * values[None, :]) @ q.T

    def basis(self):
        if self.structure == "full":
            return self.factors[0]
        if self.structure == "kron":
            return np.kron(*self.factors)
        q = np.eye(self.eigenvalues.size)
        if self.structure == "blocks":
            for start, stop, u_a, u_g in self.factors:
                if u_a is not None:
                    q[start:stop, start:stop] = np.kron(u_a, u_g)
        return q

    def rotate(self, jacobians):
        """`J Q`: per-example Jacobians `(N, k, P)` in the eigenbasis."""
        if self.structure == "diag":
            return jacobians
        if self.structure == "full":
            return jacobians @ self.factors[0]
        if self.structure == "kron":
            return _kron_rotate(jacobians, *self.factors)
        rotated = np.array(jacobians, np.float64, copy=True)
        for start, stop, u_a, u_g in self.factors:
            if u_a is not None:
                rotated[..., start:stop] = _kron_rotate(
                    jacobians[..., start:stop], u_a, u_g
                )
        return rotated


def _kron_rotate(jacobians, u_a, u_g):
    """`J kron(U_A, U_G)` without forming the Kronecker product."""
    shape = jacobians.shape[:-1]
    blocks = jacobians.reshape(*shape, u_a.shape[0], u_g.shape[0])
    return np.einsum("...ij,ia,jb->...ab", blocks, u_a, u_g).reshape(*shape, -1)


def posterior_scale(eigen, noise_precision, prior_precision):
    """`1 / (s lam + delta)`, the posterior covariance's eigenvalues."""
    return 1.0 / (noise_precision * eigen.eigenvalues + prior_precision)


def last_layer_ggn(structure, phi, lambdas):
    """The last-layer GGN (unit noise precision) in eigen form.

    Args:
        structure: "full", "kron" or "diag".
        phi: `(N, d1)` augmented features.
        lambdas: `(N, k, k)` output Hessians.
    """
    n, d1 = phi.shape
    k = lambdas.shape[-1]
    if structure == "diag":
        diagonal = np.square(phi).T @ np.diagonal(lambdas, axis1=1, axis2=2)
        return Eigen.from_diagonal(diagonal)  # (d1, k) -> i * k + c
    if structure == "kron":
        # KFAC: E[a a^T (x) g] ~ E[a a^T] (x) E[g], times N.
        left = phi.T @ phi / max(n, 1)
        right = np.sum(lambdas, axis=0)
        return Eigen.from_kron(left, right)
    ggn = np.zeros((d1, k, d1, k))
    for lo, hi in chunks(n, d1 * k * k):
        weighted = phi[lo:hi, :, None] * lambdas[lo:hi].reshape(hi - lo, 1, k * k)
        part = np.tensordot(weighted, phi[lo:hi], axes=(0, 0))  # (d1, kk, d1)
        ggn += part.reshape(d1, k, k, d1).transpose(0, 1, 3, 2)
    p = d1 * k
    return Eigen.from_matrix(ggn.reshape(p, p))


class JacobianGGN:
    """The all-layer GGN, "full" or "diag", summed over batches of
    per-example Jacobians (so that only one batch is held at a time).

    Args:
        structure: "full" or "diag".
        num_params: P.
    """

    def __init__(self, structure, num_params):
        self.structure = structure
        shape = (num_params, num_params) if structure == "full" else (num_params,)
        self.total = np.zeros(shape)

    def add(self, jacobians, lambdas):
        """Adds `sum_n J_n^T Lambda_n J_n` of a batch `(b, k, P)`."""
        if self.structure == "diag":
            # sum_n sum_ab J_nap L_nab J_nbp
            self.total += np.einsum("nap,nab,nbp->p", jacobians, lambdas, jacobians)
            return
        weighted = np.einsum("nab,nbp->nap", lambdas, jacobians)
        p = jacobians.shape[-1]
        self.total += np.tensordot(
            jacobians.reshape(-1, p), weighted.reshape(-1, p), axes=(0, 0)
        )

    def eigen(self):
        if self.structure == "diag":
            return Eigen.from_diagonal(self.total)
        return Eigen.from_matrix(self.total)


class JacobianKFAC:
    """All-layer KFAC (Martens & Grosse 2015; Ritter et al. 2018), summed
    over batches of examples: the GGN block-diagonal over layers, each Dense
    layer's block `kron(A, G)`.

    For a Dense layer with augmented inputs `a~_n = [a_n, 1]` (`d1` wide)
    and `d2` outputs, the Jacobian of the outputs in its weights is
    `J_n[c, i * d2 + j] = a~_n[i] g_n[c, j]`, `g_n (k, d2)` the Jacobian in
    the layer's pre-activations, so its exact GGN block is `sum_n kron(a~_n
    a~_n^T, g_n^T Lambda_n g_n)`; KFAC keeps `kron(A / N, G)` with `A =
    sum_n a~_n a~_n^T`, `G = sum_n g_n^T Lambda_n g_n` (exact for one linear
    layer under a homoscedastic Gaussian likelihood). `g_n` is read back from
    `J_n` and `a~_n`: `g_n[c, j] = sum_i a~_n[i] J_n[c, i, j] / |a~_n|^2`
    (exact; an example with `a~_n = 0`, possible only without a bias, adds
    nothing to the exact block and is left out of `G`). Other parameters
    keep their exact GGN diagonal. Every term is a sum over examples, so
    the batches of `add` give the same blocks as all rows at once.

    Args:
        ranges: `(start, stop, d1)` per consecutive parameter range, `d1`
            the augmented input width of a Dense layer's block, or None for
            a range held diagonally.
    """

    def __init__(self, ranges):
        self.ranges = list(ranges)
        self.count = 0
        self.sums = []
        for start, stop, d1 in self.ranges:
            if d1 is None:
                self.sums.append(np.zeros(stop - start))
            else:
                d2 = (stop - start) // d1
                self.sums.append((np.zeros((d1, d1)), np.zeros((d2, d2))))

    def add(self, jacobians, lambdas, inputs):
        """Adds a batch: Jacobians `(b, k, P)`, output Hessians `(b, k, k)`
        and, per range, the augmented inputs `(b, d1)` (None where
        diagonal)."""
        n = jacobians.shape[0]
        self.count += n
        for i, ((start, stop, d1), rows) in enumerate(zip(self.ranges, inputs)):
            part = jacobians[..., start:stop]
            if d1 is None:
                self.sums[i] += np.einsum("nap,nab,nbp->p", part, lambdas, part)
                continue
            part = part.reshape(n, -1, d1, (stop - start) // d1)
            norms = np.sum(np.square(rows), axis=1)
            safe = np.where(norms > 0, norms, 1.0)
            g = np.einsum("ni,ncij->ncj", rows, part) / safe[:, None, None]
            g = np.where((norms > 0)[:, None, None], g, 0.0)
            left, right = self.sums[i]
            left += rows.T @ rows
            right += np.einsum("nai,nab,nbj->ij", g, lambdas, g)

    def eigen(self):
        eigenvalues, blocks = [], []
        for (start, stop, d1), total in zip(self.ranges, self.sums):
            if d1 is None:
                eigenvalues.append(np.maximum(total, 0.0))
                blocks.append((start, stop, None, None))
                continue
            left, right = total
            block = Eigen.from_kron(left / max(self.count, 1), right)
            eigenvalues.append(block.eigenvalues)
            blocks.append((start, stop, *block.factors))
        return Eigen("blocks", np.concatenate(eigenvalues), tuple(blocks))


def jacobian_variance(eigen, jacobians, scale):
    """`f_var (N, k, k)` from per-example Jacobians `(N, k, P)`."""
    jq = eigen.rotate(jacobians)
    return np.einsum("nap,p,nbp->nab", jq, scale, jq)


def sampling_factor(eigen, scale):
    """The posterior's square root `Q diag(sqrt(scale))` in the form the
    sampler uses: "full" `(P, P)`; "kron" `(U_A, U_G, S)` with `S` the
    `(d1, k)` root scales; "diag" the `(P,)` root scales."""
    root = np.sqrt(scale)
    if eigen.structure == "full":
        return (eigen.factors[0] * root[None, :],)
    if eigen.structure == "kron":
        u_a, u_g = eigen.factors
        return (u_a, u_g, root.reshape(u_a.shape[0], u_g.shape[0]))
    return (root,)


class Evidence:
    """The log marginal likelihood of the Laplace approximation,

        log p(D | delta, s) ~ log p(D | theta*) - delta |theta*|^2 / 2
            + (P / 2) log delta - (1 / 2) sum_i log(s lam_i + delta),

    with `theta*` the MAP (fixed), `s = 1 / sigma^2`. For homoscedastic
    Gaussian regression `log p(D | theta*) = (n / 2) log(s / 2 pi)
    - s SSE / 2` over the `n = N k` targets; otherwise a constant.

    Args:
        eigenvalues: `lam (P,)` of the unit-noise GGN.
        sq_norm: `|theta*|^2`.
        loglik: The log-likelihood at the MAP when it does not depend on `s`.
        num_targets, sse: `n` and the sum of squared residuals when it does
            (homoscedastic regression), else None.
    """

    def __init__(self, eigenvalues, sq_norm, loglik=0.0, num_targets=None, sse=None):
        self.lam = np.asarray(eigenvalues, np.float64)
        self.sq_norm = float(sq_norm)
        self.loglik = float(loglik)
        self.num_targets = num_targets
        self.sse = sse

    @property
    def has_noise(self):
        return self.num_targets is not None

    def value(self, prior_precision, noise_precision=1.0):
        delta, s = float(prior_precision), float(noise_precision)
        value = -0.5 * delta * self.sq_norm + 0.5 * self.lam.size * np.log(delta)
        value -= 0.5 * np.sum(np.log(s * self.lam + delta))
        if self.has_noise:
            n = self.num_targets
            value += 0.5 * n * (np.log(s) - np.log(2 * np.pi)) - 0.5 * s * self.sse
        else:
            value += self.loglik
        return float(value)

    def _derivatives(self, alpha, beta):
        """Gradient and Hessian in `(log delta, log s)`."""
        delta, s = np.exp(alpha), np.exp(beta)
        lam, p = self.lam, self.lam.size
        r = 1.0 / (s * lam + delta)
        g_a = -0.5 * delta * self.sq_norm - 0.5 * delta * np.sum(r) + 0.5 * p
        h_aa = g_a - 0.5 * p + 0.5 * delta**2 * np.sum(r * r)
        if not self.has_noise:
            return np.array([g_a]), np.array([[h_aa]])
        lr = lam * r
        g_b = 0.5 * self.num_targets - 0.5 * s * self.sse - 0.5 * s * np.sum(lr)
        h_bb = -0.5 * s * self.sse - 0.5 * s * np.sum(lr) + 0.5 * s**2 * np.sum(lr**2)
        h_ab = 0.5 * delta * s * np.sum(lr * r)
        return np.array([g_a, g_b]), np.array([[h_aa, h_ab], [h_ab, h_bb]])

    def maximize(self, prior_precision, noise_precision, fit_noise, bound=30.0):
        """The `(delta, s)` that maximize `value` (`s` held when not
        `fit_noise`): the best point of a grid on a log scale, refined by
        safeguarded Newton steps in `(log delta, log s)` to a relative
        precision near float64's."""
        fit_noise = fit_noise and self.has_noise
        beta0 = np.log(noise_precision)

        def objective(u):
            s = np.exp(u[1]) if fit_noise else noise_precision
            return self.value(np.exp(u[0]), s)

        grid = np.arange(-bound, bound + 1e-9, 1.0)
        if fit_noise:
            betas = np.arange(-bound, bound + 1e-9, 2.0)
            points = [np.array([a, b]) for a in grid for b in betas]
        else:
            points = [np.array([a, beta0]) for a in grid]
        points.append(np.array([np.log(prior_precision), beta0]))
        u = max(points, key=objective)
        best = objective(u)
        dims = 2 if fit_noise else 1
        for _ in range(200):
            gradient, hessian = self._derivatives(u[0], u[1])
            gradient, hessian = gradient[:dims], hessian[:dims, :dims]
            try:
                negative = np.all(np.linalg.eigvalsh(hessian) < 0)
                step = -np.linalg.solve(hessian, gradient) if negative else gradient
            except np.linalg.LinAlgError:
                step = gradient
            length = np.max(np.abs(step))
            if length > 2.0:
                step = step * (2.0 / length)
            t, moved = 1.0, False
            while t > 1e-12:
                trial = u.copy()
                trial[:dims] = np.clip(u[:dims] + t * step, -bound, bound)
                value = objective(trial)
                if value >= best:
                    moved = value > best or np.any(trial != u)
                    u, best = trial, value
                    break
                t *= 0.5
            if not moved or np.max(np.abs(t * step)) < 1e-13:
                break
        s = float(np.exp(u[1])) if fit_noise else float(noise_precision)
        return float(np.exp(u[0])), s
