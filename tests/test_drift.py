"""Monitoring statistics: reference profiles and drift tests (mlsd_jax.monitoring).

The statistics are checked against scipy on the same samples; the decisions against their
error rates on seeded no-drift splits and their power on injected shifts of known size; the
real-data check uses the ACS employment reference (2015) and analysis (2016-2018) files.
"""
import json

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from mlsd_jax.monitoring import (SCHEMA_VERSION, PCAReconstruction, Profile, adjust_pvalues, check,
                                 chi2_homogeneity, js_distance, ks_2samp, psi, wasserstein)
from mlsd_jax.monitoring.drift import PSI_EPS
from mlsd_jax.monitoring.profile import PERCENTILES


def _mixed(rng, n, *, shift=0.0, cat_p=None):
    """Five columns of known distributions: three numeric, two categorical."""
    cat_p = cat_p if cat_p is not None else [0.4, 0.25, 0.15, 0.1, 0.05, 0.05]
    cats = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)
    return {
        "x_normal": rng.normal(shift, 1.0, n),
        "x_lognormal": rng.lognormal(0.0, 0.7, n),
        "x_counts": rng.poisson(30.0, n).astype(np.float64),  # ties: KS is conservative here
        "c_six": cats[rng.choice(6, n, p=cat_p)],
        "c_binary": rng.integers(0, 2, n),  # int with 2 levels -> categorical
    }


# ----------------------------------------------------------------------------- vs scipy
@pytest.mark.parametrize("case", ["normal", "ties", "unequal", "large"])
def test_ks_and_wasserstein_agree_with_scipy(case):
    rng = np.random.default_rng(7)
    if case == "normal":
        a, b = rng.normal(0, 1, 800), rng.normal(0.1, 1.2, 900)
    elif case == "ties":
        a, b = rng.poisson(4, 1500).astype(float), rng.poisson(4.3, 700).astype(float)
    elif case == "unequal":
        a, b = rng.exponential(1, 60), rng.exponential(1.3, 4000)
    else:
        a, b = rng.standard_t(3, 2000), rng.standard_t(3, 200_000)
    d, p = ks_2samp(a, b)
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, rel=1e-12, abs=1e-15)
    assert p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert wasserstein(a, b) == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-10)
    # NaNs are dropped, as the profile's numeric columns do.
    a_nan = np.concatenate([a, [np.nan, np.nan]])
    assert ks_2samp(a_nan, b) == (d, p)


def test_categorical_statistics_agree_with_scipy():
    rng = np.random.default_rng(3)
    for k in (2, 3, 7):
        ref = rng.integers(20, 3000, k)
        cur = rng.integers(0, 1000, k)
        stat, dof, p = chi2_homogeneity(ref, cur)
        sc = stats.chi2_contingency(np.stack([ref, cur]), correction=False)
        assert stat == pytest.approx(sc.statistic, rel=1e-10)
        assert dof == sc.dof
        assert p == pytest.approx(sc.pvalue, rel=1e-8, abs=1e-300)
        assert js_distance(ref, cur) == pytest.approx(jensenshannon(ref, cur, base=2), rel=1e-9)
    # A bucket empty on both sides is dropped (scipy refuses zero expected counts).
    stat, dof, p = chi2_homogeneity([10, 0, 30], [12, 0, 25])
    sc = stats.chi2_contingency(np.array([[10, 30], [12, 25]]), correction=False)
    assert (stat, dof) == (pytest.approx(sc.statistic), 1) and p == pytest.approx(sc.pvalue)
    # PSI with the epsilon floor, written out.
    p_ref, p_cur = np.array([0.5, 0.5, 0.0]), np.array([0.3, 0.6, 0.1])
    pr, pc = np.maximum(p_ref, PSI_EPS), np.maximum(p_cur, PSI_EPS)
    assert psi(p_ref, p_cur) == pytest.approx(np.sum((pc - pr) * np.log(pc / pr)))
    assert psi([5, 5], [50, 50]) == pytest.approx(0.0, abs=1e-15)


def test_multiple_testing_adjustments():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(0, 1, 20), [1e-5, 3e-4, 0.004]])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), stats.false_discovery_control(p, method="bh"),
                               rtol=1e-12)
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), np.minimum(p * p.size, 1.0))
    np.testing.assert_array_equal(adjust_pvalues(p, "none"), p)
    with pytest.raises(ValueError, match="correction must be one of"):
        adjust_pvalues(p, "holm")


def test_check_runs_the_scipy_tests_on_profile_and_window():
    rng = np.random.default_rng(11)
    prof = Profile.fit(_mixed(rng, 6000), sample_size=1500, seed=4)
    window = _mixed(rng, 3000, shift=0.05)
    window["x_normal"][:40] = np.nan
    rep = check(prof, window, correction="none")
    got = rep.columns["x_normal"]
    sample = np.asarray(prof.columns["x_normal"].sample)
    present = window["x_normal"][~np.isnan(window["x_normal"])]
    sc = stats.ks_2samp(sample, present, method="asymp")
    assert got["ks_statistic"] == pytest.approx(sc.statistic) and got["p_value"] == pytest.approx(sc.pvalue)
    assert got["wasserstein"] == pytest.approx(stats.wasserstein_distance(sample, present))
    assert got["wasserstein_norm"] == pytest.approx(got["wasserstein"] / prof.columns["x_normal"].std)
    assert got["missing_rate"] == pytest.approx(40 / 3000)
    # Categorical: the 2 x K table of the full reference counts and the window's counts.
    cp = prof.columns["c_six"]
    cur = [int(np.sum(window["c_six"] == c)) for c in cp.categories]
    sc = stats.chi2_contingency(np.array([cp.counts, cur]), correction=False)
    got = rep.columns["c_six"]
    assert got["chi2"] == pytest.approx(sc.statistic) and got["p_value"] == pytest.approx(sc.pvalue)
    assert got["js_distance"] == pytest.approx(jensenshannon(cp.counts, cur, base=2))


# ----------------------------------------------------------------------------- profile
def test_profile_fit_and_json_round_trip():
    rng = np.random.default_rng(5)
    cols = _mixed(rng, 10_000)
    cols["x_normal"][::50] = np.nan
    cols["c_six"][::100] = None
    cols["score"] = rng.integers(0, 1000, 10_000)  # many int levels -> numeric
    cols["label"] = rng.integers(0, 2, 10_000).astype(np.float64)  # float labels: override
    prof = Profile.fit(cols, kinds={"label": "categorical"}, sample_size=2000, top_k=4, seed=1)
    assert prof.kinds() == {"x_normal": "numeric", "x_lognormal": "numeric", "x_counts": "numeric",
                            "c_six": "categorical", "c_binary": "categorical", "score": "numeric",
                            "label": "categorical"}
    num = prof.columns["x_normal"]
    present = cols["x_normal"][~np.isnan(cols["x_normal"])]
    assert (num.count, num.missing) == (10_000, 200)
    np.testing.assert_allclose(num.percentiles, np.percentile(present, PERCENTILES))
    assert sum(num.hist) == present.size and len(num.hist) == len(num.edges) + 1
    assert len(num.sample) == 2000 and set(num.sample) <= set(present.tolist())
    assert num.mean == pytest.approx(present.mean()) and num.std == pytest.approx(present.std())
    cat = prof.columns["c_six"]
    assert cat.categories == ["a", "b", "c", "d"] and cat.missing == 100
    assert sum(cat.counts) + cat.other == 10_000 - 100 and cat.n_distinct == 6
    assert prof.columns["label"].categories in (["0", "1"], ["1", "0"])  # 0.0/1.0 read as 0/1

    text = prof.to_json()
    d = json.loads(text)
    assert d["schema_version"] == SCHEMA_VERSION and len(text) < 200_000
    back = Profile.from_json(text)
    assert back == prof
    assert back.to_json() == text
    # Seeded sample: same seed, same sample; another seed, another one.
    assert Profile.fit(cols, kinds={"label": "categorical"}, seed=1).columns["x_normal"].sample == num.sample
    assert Profile.fit(cols, kinds={"label": "categorical"}, seed=2).columns["x_normal"].sample != num.sample
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="schema_version"):
        Profile.from_dict(d)
    with pytest.raises(ValueError, match=r"kinds\['score'\]"):
        Profile.fit(cols, kinds={"score": "ordinal"})
    with pytest.raises(KeyError, match="nope"):
        Profile.fit(cols, kinds={"nope": "numeric"})


def test_check_errors_name_the_column():
    rng = np.random.default_rng(2)
    prof = Profile.fit(_mixed(rng, 2000))
    window = _mixed(rng, 500)
    del window["x_counts"]
    with pytest.raises(KeyError, match="x_counts"):
        check(prof, window)
    window = _mixed(rng, 500)
    window["x_normal"] = window["x_normal"].astype(str).astype(object)
    with pytest.raises(TypeError, match="x_normal"):
        check(prof, window)


# ----------------------------------------------------------------------------- error rates
def test_false_positive_rate_near_alpha_and_bh_controls_the_family():
    alpha, trials = 0.05, 200
    raw, any_raw, any_bh, any_bonf = [], 0, 0, 0
    for t in range(trials):
        rng = np.random.default_rng(1000 + t)
        prof = Profile.fit(_mixed(rng, 4000), seed=t)
        rep = check(prof, _mixed(rng, 2000), alpha=alpha, correction="bh")
        p = np.array([c["p_value"] for c in rep.columns.values()])
        raw.append(p)
        any_raw += bool((p < alpha).any())
        any_bh += bool(rep.drifted)
        any_bonf += bool((adjust_pvalues(p, "bonferroni") < alpha).any())
    raw = np.array(raw)
    rate = (raw < alpha).mean(0)  # per column over the 200 windows
    cols = list(rep.columns)
    # Continuous KS and chi-squared: near alpha (binomial sd over 200 trials is 0.015).
    for name in ("x_normal", "x_lognormal", "c_six", "c_binary"):
        assert 0.01 <= rate[cols.index(name)] <= 0.10, (name, rate)
    assert rate[cols.index("x_counts")] <= 0.10  # KS with ties is conservative
    assert 0.02 <= (raw < alpha).mean() <= 0.08
    # Five tests per window: uncorrected, some column fires in ~1 - 0.95^5 = 23% of windows.
    assert any_raw / trials >= 0.12
    assert any_bh / trials <= 0.09 and any_bonf / trials <= 0.09


def test_power_on_injected_shifts():
    rng = np.random.default_rng(21)
    prof = Profile.fit(_mixed(rng, 20_000))
    # Mean shift of 0.2 reference std in one column, 5,000 rows.
    rep = check(prof, _mixed(rng, 5000, shift=0.2), correction="bonferroni")
    assert rep.drifted == ["x_normal"], rep.drifted
    assert 0.15 < rep.columns["x_normal"]["wasserstein_norm"] < 0.25
    # Category share 5% -> 30% ("e"), the others scaled down.
    p = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.05])
    q = p * 0.70 / (1 - 0.05)
    q[4] = 0.30
    rep = check(prof, _mixed(rng, 5000, cat_p=q / q.sum()), correction="bh")
    assert rep.drifted == ["c_six"], rep.drifted
    assert rep.columns["c_six"]["psi"] > 0.25 and rep.columns["c_six"]["js_distance"] > 0.1


def test_unseen_categories_go_to_other_and_are_reported():
    rng = np.random.default_rng(8)
    ref = _mixed(rng, 5000)
    prof = Profile.fit(ref)
    win = _mixed(rng, 2000)
    win["c_six"][:150] = "brand_new"
    win["c_six"][150:160] = "also_new"
    win["c_six"][160:170] = None
    res = check(prof, win).columns["c_six"]
    assert res["unseen_count"] == 160 and res["other_count"] == 160
    assert res["unseen_values"] == {"brand_new": 150, "also_new": 10}
    assert res["missing_rate"] == pytest.approx(10 / 2000)
    assert res["drift"] and res["dof"] == 6  # six reference categories + other
    # A profile that keeps only the top 3: values past them may be reference tail values.
    small = Profile.fit(ref, top_k=3)
    res = check(small, win).columns["c_six"]
    assert res["unseen_count"] is None and res["other_count"] > 160
    assert set(res["unseen_values"]) >= {"brand_new", "d", "e"}


def test_missing_rate_changes_are_a_separate_family():
    rng = np.random.default_rng(9)
    ref = _mixed(rng, 10_000)
    ref["x_lognormal"][::20] = np.nan  # 5% missing in the reference
    prof = Profile.fit(ref)
    win = _mixed(rng, 4000)
    win["x_lognormal"][::20] = np.nan  # same rate: quiet
    rep = check(prof, win)
    assert not rep.missing_drifted and not rep.drifted
    win["x_lognormal"][::4] = np.nan  # 25%: flagged, the present values still look alike
    win["c_six"][:400] = None  # 10% vs none in the reference
    rep = check(prof, win)
    assert rep.missing_drifted == ["x_lognormal", "c_six"] and not rep.drifted
    tab = np.array([[prof.columns["c_six"].missing, 10_000], [400, 3600]])
    assert rep.columns["c_six"]["missing_p_value"] == pytest.approx(
        stats.chi2_contingency(tab, correction=False).pvalue, rel=1e-9, abs=1e-300)
    # A column that went entirely missing: no value test, but the missingness alarm fires.
    win["x_normal"] = np.full(4000, np.nan)
    res = check(prof, win).columns["x_normal"]
    assert res["p_value"] is None and not res["drift"] and res["missing_drift"]


# ----------------------------------------------------------------------------- multivariate
def _corr_pair(rng, n, rho):
    x1 = rng.normal(size=n)
    x2 = rho * x1 + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
    cats = np.array(["u", "v", "w"], dtype=object)
    return {"x1": x1, "x2": x2, "x3": rng.normal(size=n), "x4": rng.exponential(size=n),
            "c": cats[rng.choice(3, n, p=[0.5, 0.3, 0.2])]}


def test_pca_reconstruction_flags_a_correlation_flip_that_univariate_tests_miss():
    rng = np.random.default_rng(31)
    ref = _corr_pair(rng, 50_000, 0.9)
    pca = PCAReconstruction.fit(ref, ["x1", "x2", "x3", "x4"], ["c"], chunk_size=5000)
    assert pca.lower < pca.upper
    prof = Profile.fit(ref)
    flipped = _corr_pair(rng, 5000, -0.9)  # same marginals, correlation -0.9
    assert not check(prof, flipped, correction="bh").drifted
    res = pca.check(flipped)
    assert res["drift"] and res["error"] > pca.upper + 10 * pca.ref_std
    # No drift: windows from the reference distribution stay inside the band.
    quiet = [pca.check(_corr_pair(rng, 5000, 0.9))["drift"] for _ in range(10)]
    assert sum(quiet) == 0
    # Round trip through JSON keeps the check.
    back = PCAReconstruction.from_dict(json.loads(json.dumps(pca.to_dict())))
    assert back.check(flipped) == res


# ----------------------------------------------------------------------------- real data
def test_acs_2018_chunk_drifts_and_a_held_out_reference_chunk_does_not():
    from mlsd_jax.data.acs import ACS_FEATURES, load_acs_employment

    ref = load_acs_employment("reference")
    ana = load_acs_employment("analysis")
    assert len(ref["AGEP"]) == 68_785 and len(ana["AGEP"]) == 208_892
    assert set(np.unique(ana["year"])) == {2016, 2017, 2018}
    feats = list(ACS_FEATURES)
    # Hold out one 5,000-row reference chunk; profile the other 63,785 rows.
    rng = np.random.default_rng(0)
    held = np.zeros(len(ref["AGEP"]), bool)
    held[rng.choice(held.size, 5000, replace=False)] = True
    prof = Profile.fit({c: ref[c][~held] for c in feats}, kinds={"AGEP": "numeric"})
    assert prof.columns["RELP"].kind == "categorical"
    same = check(prof, {c: ref[c][held] for c in feats}, correction="bh")
    assert len(same.drifted) <= 1, same.drifted
    # A random 5,000-row sample of 2018: the year-over-year change shows in ANC (NannyML's
    # most-alerted feature) while most features stay quiet.
    rows_2018 = np.flatnonzero(ana["year"] == 2018)
    sample = rng.choice(rows_2018, 5000, replace=False)
    new = check(prof, {c: ana[c][sample] for c in feats}, correction="bh")
    assert "ANC" in new.drifted and len(new.drifted) <= 4, new.drifted
    assert new.columns["ANC"]["psi"] > 5 * same.columns["ANC"]["psi"]
    # The first 5,000 rows of 2018 in file order (a consecutive chunk, as NannyML chunks the
    # analysis set): the file keeps group-quarters persons together, so RELP category 17 rises
    # from about 5% to about 70% (the chunk NannyML's docs show) and every reported feature drifts.
    start = int(rows_2018[0])
    chunk = {c: ana[c][start:start + 5000] for c in feats}
    assert set(np.unique(ana["year"][start:start + 5000])) == {2018}
    relp = prof.columns["RELP"]
    assert relp.counts[relp.categories.index("17")] / prof.columns["RELP"].count < 0.07
    assert 0.6 < np.mean(chunk["RELP"] == "17") < 0.75
    new = check(prof, chunk, correction="bh")
    reported = {"ANC", "AGEP", "RELP", "MAR", "DREM"}  # NannyML's most-alerted features
    assert set(new.drifted) & reported == reported
    for c in reported:
        assert new.columns[c]["psi"] > 5 * same.columns[c]["psi"]
