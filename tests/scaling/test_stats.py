"""Checks scripts/scaling_stats.py (ctest scaling.stats) against published tables, which are independent of its code:
Student's t quantiles (any statistics textbook's t table, to its 3 decimals), two-sided p-values, Cohen's (1988)
sample sizes for 80 % power, and textbook two-sample examples worked by hand below.

    python3 tests/scaling/test_stats.py
"""
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import scaling_stats as st  # noqa: E402

errors = []


def near(got, want, tol, what):
    if not abs(got - want) <= tol:
        errors.append(f"{what}: expected {want} ± {tol}, got {got}")


# t table, 0.975 and 0.95 quantiles (tables give 3 decimals: tolerance half a unit of the last one).
for df, q975, q95 in ((1, 12.706, 6.314), (2, 4.303, 2.920), (5, 2.571, 2.015), (10, 2.228, 1.812),
                      (25, 2.060, 1.708), (30, 2.042, 1.697), (120, 1.980, 1.658)):
    near(st.t_ppf(0.975, df), q975, 5e-4, f"t_ppf(0.975, {df})")
    near(st.t_ppf(0.95, df), q95, 5e-4, f"t_ppf(0.95, {df})")
    # The two-sided tail at the tabulated quantile is 0.05 (to the table's rounding: the slope of the tail there).
    near(st.t_sf2(q975, df), 0.05, 2e-4 if df > 1 else 1e-5, f"t_sf2({q975}, {df})")
near(st.t_cdf(0.0, 7), 0.5, 1e-15, "t_cdf(0, 7)")
# df = 1 is the Cauchy distribution: P(T <= t) = 1/2 + atan(t)/pi, in closed form.
for t in (-3.0, -0.5, 0.7, 4.0):
    near(st.t_cdf(t, 1), 0.5 + math.atan(t) / math.pi, 1e-12, f"t_cdf({t}, 1) against the Cauchy CDF")
# df = 2: P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)).
for t in (-2.0, 0.3, 5.0):
    near(st.t_cdf(t, 2), 0.5 + t / (2 * math.sqrt(2 + t * t)), 1e-12, f"t_cdf({t}, 2) in closed form")

# Cohen's table 2.4.1 (two-sided alpha 0.05, power 0.80): n per group 26 at d = 0.8, 64 at d = 0.5, 393 at d = 0.2.
# The shifted-central approximation may be one seed off the noncentral-t answer.
for d, n in ((0.8, 26), (0.5, 64), (0.2, 393)):
    got = st.seeds_for_power(d, 1.0)
    if got is None or abs(got - n) > 1:
        errors.append(f"seeds_for_power({d}, 1): expected {n} ± 1 (Cohen), got {got}")

# A worked two-sample example: xs = 1, 2, 3, 4 (mean 2.5, var 5/3), ys = 2, 4, 6 (mean 4, var 4).
w = st.welch([1, 2, 3, 4], [2, 4, 6])
se = math.sqrt(5 / 3 / 4 + 4 / 3)
df = se ** 4 / ((5 / 3 / 4) ** 2 / 3 + (4 / 3) ** 2 / 2)
near(w["diff"], -1.5, 1e-15, "welch diff")
near(w["se"], se, 1e-15, "welch se")
near(w["df"], df, 1e-12, "welch df")
near(w["hi"] - w["lo"], 2 * st.t_ppf(0.975, df) * se, 1e-12, "welch interval width")
sd, pdf = st.pooled_sd([[1, 2, 3, 4], [2, 4, 6]])
near(sd, math.sqrt((3 * 5 / 3 + 2 * 4) / 5), 1e-15, "pooled sd")
if pdf != 5:
    errors.append(f"pooled df: expected 5, got {pdf}")
p = st.pooled([1, 2, 3, 4], [2, 4, 6], sd, pdf)
near(p["se"], sd * math.sqrt(1 / 4 + 1 / 3), 1e-15, "pooled se")
# Least squares through (0, 1), (1, 3), (2, 2), (3, 5): slope 1.1, intercept 1.1, residuals 0.1, ... by hand.
f = st.fit_line([0, 1, 2, 3], [1, 3, 2, 5])
near(f["slope"], 1.1, 1e-12, "fit slope")
near(f["intercept"], 1.1, 1e-12, "fit intercept")
res = [1 - 1.1, 3 - 2.2, 2 - 3.3, 5 - 4.4]
near(f["se"], math.sqrt(sum(r * r for r in res) / 2 / 5), 1e-12, "fit slope standard error")
# The slope's standard error from group means of known sd: sd / sqrt(n Sxx) for equal n.
near(st.slope_se_from_seeds([0, 1, 2, 3], [6, 6, 6, 6], 0.01), 0.01 / math.sqrt(6 * 5), 1e-15, "slope_se_from_seeds")

if errors:
    print("test_stats: " + "\n test_stats: ".join(errors))
    sys.exit(1)
print("test_stats: t quantiles, tails and CDFs, Cohen's sample sizes, Welch, pooled and least-squares examples agree")
