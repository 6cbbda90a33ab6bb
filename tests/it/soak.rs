//! The light soak (docs/reliability.md): 20,000 events through every role as a real
//! process on a 3-node cluster, under a random fault schedule of every kind; nothing may
//! be lost. `SOAK_SEED=<seed>` replays a schedule; `SOAK_KEEP=1` keeps the report and
//! logs of a passing run; the full run is scripts/soak.sh.

use relaycord_testkit::relaycord_bin;
use relaycord_testkit::soak::{self, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_soak_under_every_kind_of_fault_loses_nothing() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(soak::random_seed);
    let dir = tempfile::Builder::new()
        .prefix("relaycord-soak-")
        .tempdir()
        .unwrap();
    let options = Options::light(seed, relaycord_bin(), dir.path().to_owned());
    let report = soak::run(&options).await;
    soak::write_json(&report, &dir.path().join("soak.json")).unwrap();
    eprintln!("{}", report.table());
    let failed = report.lost > 0
        || report.json["settled"] != true
        || report
            .faults_per_kind
            .iter()
            .any(|(_, injected)| *injected == 0);
    // A failed run keeps its config, every process's log and the report.
    let kept = (failed || std::env::var_os("SOAK_KEEP").is_some()).then(|| dir.keep());
    if let Some(kept) = &kept {
        eprintln!("soak: report and logs kept in {}", kept.display());
    }
    assert!(
        !failed,
        "seed {seed}: lost {} (or unsettled, or a fault kind never ran)\n{}",
        report.lost,
        serde_json::to_string_pretty(&report.json).unwrap()
    );
}
