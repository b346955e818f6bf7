//! The seed boxes from the users' documents, as table-driven checks on the shipped profiles.
//! Each asserts the tree path and the reasons, not only the names.

use super::*;
use crate::profiles;

fn on(profile: &str, options: RecommendOptions) -> Recommendation {
    recommend(&profiles::resolve(profile).unwrap(), &options)
}

fn default_on(profile: &str) -> Recommendation {
    on(profile, RecommendOptions::default())
}

fn path(r: &Recommendation) -> String {
    r.plan
        .path
        .iter()
        .map(|s| format!("{} {} → {}", s.question, s.value, s.branch))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn miss<'a>(r: &'a Recommendation, model: &str) -> &'a NearMiss {
    r.near_misses
        .iter()
        .find(|m| m.model == model)
        .unwrap_or_else(|| panic!("{model} not among the near-misses: {:#?}", r.near_misses))
}

fn params_of(c: &Candidate) -> f64 {
    c.estimate.params as f64 / 1e9
}

/// The memory rule: nothing picked needs more than the RAM budget, and nothing swaps.
fn assert_memory_rule(r: &Recommendation) {
    for pick in &r.picks {
        let p = &pick.estimate.placement;
        assert!(p.fit.runs(), "{} {:?}", pick.model, p.fit);
        assert!(
            p.ram_bytes <= p.ram_budget_bytes,
            "{} needs {} of {}",
            pick.model,
            p.ram_bytes,
            p.ram_budget_bytes
        );
        assert!(
            p.gpu_bytes <= p.vram_budget_bytes || p.backend == "cpu",
            "{}",
            pick.model
        );
        assert!(pick.estimate.speed.tg_tps >= r.min_tps, "{}", pick.model);
    }
}

#[test]
fn pi3b_picks_the_tinyllama_class_at_4_bit_and_rejects_phi3_mini() {
    let r = default_on("pi3b");
    let p = path(&r);
    assert!(p.contains("GPU with ≥ 2 GiB VRAM? none → no → CPU"), "{p}");
    assert!(p.contains("≥ 1 GiB → up to ~1.1B at 4-bit"), "{p}");
    assert!(!r.picks.is_empty());
    for pick in &r.picks {
        assert!(
            params_of(pick) <= 1.2,
            "{} is too big for a Pi 3B",
            pick.model
        );
    }
    let class = ["tinyllama", "qwen2", "smollm2", "mobilellm"];
    assert!(
        class.iter().any(|c| r.picks[0].model.starts_with(c)),
        "{}",
        r.picks[0].model
    );
    let phi3 = miss(&r, "phi-3-mini");
    assert!(
        phi3.reason.contains("needs") && phi3.reason.contains("available"),
        "{}",
        phi3.reason
    );
    assert!(phi3.needs_bytes > 2 << 30);
    assert_memory_rule(&r);
}

#[test]
fn pi4_fits_phi3_mini_and_gemma_2b_at_4_bit_but_no_7b() {
    let r = on(
        "pi4-4gb",
        RecommendOptions {
            top: 20,
            ..RecommendOptions::default()
        },
    );
    assert!(
        path(&r).contains("≥ 4 GiB → up to ~4B at 4-bit"),
        "{}",
        path(&r)
    );
    let pick = |id: &str| r.picks.iter().find(|c| c.model == id);
    let phi3 = pick("phi-3-mini").expect("phi-3-mini fits a Pi 4");
    assert!(phi3.quant.starts_with("Q4"), "{}", phi3.quant);
    assert!(
        pick("gemma-2b").is_some()
            || r.near_misses
                .iter()
                .any(|m| m.model == "gemma-2b" && m.reason.contains("scores higher")),
        "gemma-2b neither picked nor beaten by a lighter pick"
    );
    for c in &r.picks {
        assert!(params_of(c) < 6.0, "{} should not fit a 4 GB Pi", c.model);
    }
    let qwen7b = miss(&r, "qwen2.5-7b");
    assert!(qwen7b.reason.contains("is available"), "{}", qwen7b.reason);
    assert_memory_rule(&r);
}

#[test]
fn ryzen_with_a_4gb_gpu_gets_the_users_stages() {
    let r = on(
        "ryzen5-3600-gtx1050ti",
        RecommendOptions {
            top: 30,
            ..RecommendOptions::default()
        },
    );
    let p = path(&r);
    assert!(p.contains("GTX 1050 Ti with 4.0 GiB → yes"), "{p}");
    assert!(p.contains("≥ 16 GiB"), "{p}");
    // Full offload only for small models; 7B gets a partial-offload plan.
    for c in &r.picks {
        let fit = c.estimate.placement.fit;
        if fit == Fit::FitsInVram {
            assert!(
                params_of(c) <= 3.5,
                "{} {} fully on a 4 GiB GPU",
                c.model,
                c.quant
            );
        }
    }
    let qwen7b = r
        .picks
        .iter()
        .find(|c| c.model == "qwen2.5-7b")
        .expect("qwen2.5-7b picked");
    assert_eq!(qwen7b.estimate.placement.fit, Fit::PartialOffload);
    assert!(qwen7b.estimate.placement.gpu_layers > 0);
    // 13-14B run at Q4_K_M/Q5_K_M.
    let big = r
        .picks
        .iter()
        .find(|c| (13.0..15.5).contains(&params_of(c)))
        .expect("a 14B is picked");
    assert!(
        ["Q4_K_M", "Q5_K_M"].contains(&big.quant.as_str()),
        "{} {}",
        big.model,
        big.quant
    );
    // Not recommended, with why: 70B is too slow, Mixtral costs memory a dense 14B beats.
    assert!(!r
        .picks
        .iter()
        .any(|c| c.model == "llama-3-70b" || c.model == "mixtral-8x7b"));
    let llama70 = miss(&r, "llama-3-70b");
    assert!(
        llama70.reason.contains("runs slowly")
            && llama70.reason.contains("floor")
            && llama70.reason.contains("GiB"),
        "{}",
        llama70.reason
    );
    let mixtral = miss(&r, "mixtral-8x7b");
    assert!(
        mixtral.reason.contains("GiB for") && mixtral.reason.contains("scores higher"),
        "{}",
        mixtral.reason
    );
    for id in ["qwen2.5-coder-32b", "deepseek-coder-33b", "qwq-32b"] {
        assert!(miss(&r, id).reason.contains("runs slowly"), "{id}");
    }
    assert!(r.runtime_hint.as_deref().unwrap_or("").contains("CUDA"));
    assert_memory_rule(&r);
}

#[test]
fn rtx3060_runs_7_and_8b_fully_on_the_gpu() {
    let r = on(
        "desktop-rtx3060-12gb",
        RecommendOptions {
            top: 20,
            ..RecommendOptions::default()
        },
    );
    let on_gpu: Vec<&Candidate> = r
        .picks
        .iter()
        .filter(|c| {
            (6.5..8.5).contains(&params_of(c)) && c.estimate.placement.fit == Fit::FitsInVram
        })
        .collect();
    assert!(!on_gpu.is_empty(), "no 7-8B fully on the GPU");
    for c in on_gpu {
        assert!(
            c.quant.starts_with("Q4")
                || c.quant.starts_with("Q5")
                || c.quant.starts_with("Q6")
                || c.quant == "Q8_0"
        );
        assert_eq!(c.estimate.placement.backend, "cuda");
    }
    assert_memory_rule(&r);
}

#[test]
fn phone_and_m1_get_sensible_picks_within_memory() {
    for profile in ["phone-8gb", "apple-m1-8gb"] {
        let r = default_on(profile);
        assert!(!r.picks.is_empty(), "{profile}");
        assert_memory_rule(&r);
        assert!(r.picks.iter().all(|c| params_of(c) < 9.0), "{profile}");
    }
    let m1 = default_on("apple-m1-8gb");
    assert!(path(&m1).contains("unified memory"), "{}", path(&m1));
    assert_eq!(m1.picks[0].estimate.placement.backend, "metal");
    assert!(m1.runtime_hint.as_deref().unwrap_or("").contains("MLX"));
}

#[test]
fn tasks_rank_by_their_own_scores() {
    let code = on(
        "desktop-rtx3060-12gb",
        RecommendOptions {
            task: Task::Code,
            ..RecommendOptions::default()
        },
    );
    assert!(
        code.picks[0].quality_basis.starts_with("HumanEval"),
        "{}",
        code.picks[0].quality_basis
    );
    let long = on(
        "desktop-rtx3060-12gb",
        RecommendOptions {
            task: Task::LongContext,
            ..RecommendOptions::default()
        },
    );
    for c in &long.picks {
        assert!(
            crate::catalog::find(&c.model).unwrap().max_context >= quality::LONG_CONTEXT,
            "{}",
            c.model
        );
    }
}

#[test]
fn permissive_license_filter_keeps_only_permissive_models() {
    let r = on(
        "desktop-i7-9700k",
        RecommendOptions {
            license: LicenseFilter::Permissive,
            top: 10,
            ..RecommendOptions::default()
        },
    );
    for c in &r.picks {
        assert!(
            crate::catalog::find(&c.model).unwrap().license_permissive,
            "{}",
            c.model
        );
    }
}

#[test]
fn an_impossible_floor_names_the_closest_candidate() {
    let r = on(
        "pi3b",
        RecommendOptions {
            min_tps: 500.0,
            ..RecommendOptions::default()
        },
    );
    assert!(r.picks.is_empty());
    let nothing = r.nothing_fits.as_deref().unwrap();
    assert!(
        nothing.contains("closest") && nothing.contains("floor"),
        "{nothing}"
    );
}

#[test]
fn upgrades_say_what_a_gpu_unlocks() {
    let r = default_on("desktop-i7-9700k");
    let gpu = r
        .upgrades
        .iter()
        .find(|u| u.step.contains("24 GiB GPU"))
        .expect("a 24 GiB step");
    assert!(
        gpu.unlocks.as_deref().unwrap_or("").contains("cuda"),
        "{gpu:?}"
    );
    assert_eq!(r.upgrades.last().unwrap().step, "beyond that");
}
