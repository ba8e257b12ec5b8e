"""The statistics of the scaling experiment (scripts/scaling.py, docs/scaling.md), in plain Python with no package
beyond the standard library, so that every number of the summary can be recomputed by hand: Student's t distribution
(its CDF through the regularised incomplete beta function, its quantiles by bisection), Welch's and the pooled-variance
two-sample comparisons with confidence intervals, the least-squares line with the standard error of its slope, and the
number of seeds a two-sample t-test needs for a given power.
"""

import math
import statistics


def betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for k in range(1, 400):
        m2 = 2 * k
        aa = k * (b - k) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + k) * (qab + k) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * betacf(b, a, 1 - x) / b


def t_sf2(t, df):
    """Two-sided tail probability P(|T| >= |t|) of Student's t with df degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_cdf(t, df):
    """P(T <= t)."""
    p = 0.5 * t_sf2(t, df)
    return 1.0 - p if t >= 0 else p


def t_ppf(q, df):
    """The q-quantile of Student's t (0 < q < 1), by bisection on t_cdf."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_sd(xs):
    """(mean, sample standard deviation; 0 for one value)."""
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def welch(xs, ys, level=0.95):
    """Welch's comparison of mean(xs) - mean(ys): dict(diff, se, t, df, p, lo, hi) with the two-sided p-value and the
    `level` confidence interval on Welch-Satterthwaite degrees of freedom."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    vx = statistics.variance(xs) if len(xs) > 1 else 0.0
    vy = statistics.variance(ys) if len(ys) > 1 else 0.0
    se2 = vx / len(xs) + vy / len(ys)
    diff = mx - my
    if se2 <= 0:
        return dict(diff=diff, se=0.0, t=math.inf, df=0.0, p=0.0 if diff != 0 else 1.0, lo=diff, hi=diff)
    se = math.sqrt(se2)
    den = (vx / len(xs)) ** 2 / max(len(xs) - 1, 1) + (vy / len(ys)) ** 2 / max(len(ys) - 1, 1)
    df = se2 ** 2 / den if den > 0 else 1.0
    t = diff / se
    half = t_ppf(0.5 + level / 2, df) * se
    return dict(diff=diff, se=se, t=t, df=df, p=t_sf2(t, df), lo=diff - half, hi=diff + half)


def pooled_sd(groups):
    """The pooled standard deviation of several groups that share one variance, and its degrees of freedom:
    sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)), sum (n_i - 1). Groups of one value add nothing."""
    num = sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1)
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    return (math.sqrt(num / df) if df > 0 else 0.0), df


def pooled(xs, ys, sd, df, level=0.95):
    """mean(xs) - mean(ys) with the pooled standard deviation `sd` on `df` degrees of freedom (from `pooled_sd` over
    all configurations of a grid): dict(diff, se, t, df, p, lo, hi)."""
    diff = statistics.mean(xs) - statistics.mean(ys)
    se = sd * math.sqrt(1 / len(xs) + 1 / len(ys))
    if se <= 0 or df < 1:
        return dict(diff=diff, se=0.0, t=math.inf, df=df, p=0.0 if diff != 0 else 1.0, lo=diff, hi=diff)
    t = diff / se
    half = t_ppf(0.5 + level / 2, df) * se
    return dict(diff=diff, se=se, t=t, df=df, p=t_sf2(t, df), lo=diff - half, hi=diff + half)


def fit_line(xs, ys):
    """Least squares y = slope x + intercept: dict(slope, intercept, r2, se, df), `se` the standard error of the
    slope from the residuals (df = points - 2; None with fewer than 3 points)."""
    k = len(xs)
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx > 0 else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(ss_res / (k - 2) / sxx) if k > 2 and sxx > 0 else None
    return dict(slope=slope, intercept=intercept, r2=(1 - ss_res / ss_tot) if ss_tot > 0 else 1.0, se=se, df=k - 2)


def slope_se_from_seeds(xs, counts, sd):
    """Standard error of the least-squares slope through group means at xs, each the mean of counts[i] seeds with
    standard deviation sd: sqrt(sum_i w_i^2 sd^2 / n_i), w_i = (x_i - mean x) / Sxx. Seed noise only: a model that
    is not a line adds to it (the residual standard error of `fit_line` holds both)."""
    mx = statistics.mean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    return math.sqrt(sum(((x - mx) / sxx) ** 2 * sd * sd / n for x, n in zip(xs, counts)))


def smallest(ok, limit):
    """The smallest integer n in [2, limit] with ok(n), for ok monotone in n (false, then true); None if none."""
    if not ok(limit):
        return None
    lo, hi = 1, 2
    while not ok(hi):
        lo, hi = hi, min(2 * hi, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def seeds_for_power(delta, sd, power=0.8, alpha=0.05, limit=100000):
    """The smallest number of seeds per group for which a two-sided two-sample t-test at level alpha detects a true
    difference `delta` between two groups of standard deviation `sd` with probability `power` (the noncentral t
    approximated by a shifted central t, accurate to about one seed here). None if more than `limit`."""
    if delta == 0 or sd <= 0:
        return None

    def ok(n):
        df = 2 * n - 2
        shift = abs(delta) / (sd * math.sqrt(2.0 / n))
        return 1 - t_cdf(t_ppf(1 - alpha / 2, df) - shift, df) >= power

    return smallest(ok, limit)
