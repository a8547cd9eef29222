//! Each scenario, briefly, through `compare` against a real `larachat serve` started by the
//! tool (and against Centrifugo too when the pinned binary is already installed in
//! ~/.cache/larachat/bin; the test never installs it). Checks that every run completes with
//! nothing lost or duplicated and writes its JSON result and plot.
//!
//! Needs the `larachat` binary next to this crate's binary (`cargo test --workspace` builds
//! it) or in `LARACHAT_BIN`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn larachat_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("LARACHAT_BIN") {
        return b.into();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_larachat-loadtest"))
        .parent()
        .unwrap()
        .join("larachat");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p larachat) or set LARACHAT_BIN",
        bin.display()
    );
    bin
}

fn servers() -> &'static str {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    if home.join(".cache/larachat/bin/centrifugo").exists() {
        "lara,centrifugo"
    } else {
        "lara"
    }
}

/// Runs `compare` with `args` and returns its results (one per server).
fn compare(out: &Path, extra: &[&str], scenario: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larachat-loadtest"));
    cmd.args([
        "compare",
        "--rounds",
        "1",
        "--pause-secs",
        "0",
        "--no-progress",
    ])
    .args(["--timeout-secs", "20", "--servers", servers()])
    .arg("--larachat-bin")
    .arg(larachat_bin())
    .arg("--out")
    .arg(out)
    .args(extra)
    .args(scenario);
    let o = cmd.output().expect("running larachat-loadtest");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{scenario:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("| metric | lara |"), "no table:\n{stdout}");
    let name = scenario[0];
    let svg = out.join(format!("compare-{name}.svg"));
    assert!(
        std::fs::read_to_string(&svg).unwrap().starts_with("<svg"),
        "{}",
        svg.display()
    );
    let results: Vec<Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["scenario"] == name)
        .collect();
    assert_eq!(
        results.len(),
        servers().split(',').count(),
        "one result per server: {results:?}"
    );
    for r in &results {
        let server = r["server"].as_str().unwrap();
        assert!(
            out.join(format!("{name}-{server}-r1.json")).exists(),
            "{server}"
        );
        assert_eq!(r["server_log_errors"], 0, "{r}");
    }
    results
}

fn assert_complete(r: &Value) {
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    assert!(n("deliveries") > 0, "{r}");
    assert_eq!(n("missing"), 0, "{r}");
    assert_eq!(n("duplicate_deliveries"), 0, "{r}");
    assert_eq!(n("errors"), 0, "{r}");
    // Measured (at 10 ms tick resolution, so it may be 0 for a short run).
    assert!(
        r["server_cpu_us_per_delivery"].as_f64().unwrap() >= 0.0,
        "{r}"
    );
    assert!(
        r["delivery_latency"]["p99_ms"].as_f64().unwrap() > 0.0,
        "{r}"
    );
}

#[test]
fn every_scenario_runs_against_real_servers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();

    for r in compare(
        out,
        &[],
        &["fanout", "--subscribers", "20", "--messages", "30"],
    ) {
        assert_complete(&r);
        assert_eq!(r["deliveries"], 600, "{r}");
    }
    // Paced, in MessagePack.
    for r in compare(
        &out.join("msgpack"),
        &["--encoding", "msgpack"],
        &[
            "fanout",
            "--subscribers",
            "10",
            "--messages",
            "20",
            "--rate",
            "50",
        ],
    ) {
        assert_complete(&r);
        if r["server"] == "lara" {
            assert_eq!(r["encoding"], "msgpack");
        }
    }
    for r in compare(
        out,
        &[],
        &[
            "latency",
            "--pairs",
            "2",
            "--rate",
            "20",
            "--duration-secs",
            "2",
        ],
    ) {
        assert_complete(&r);
        assert!(r["received"].as_u64().unwrap() >= 60, "{r}");
    }
    for r in compare(
        out,
        &[],
        &[
            "chat",
            "--pairs",
            "5",
            "--groups",
            "2",
            "--group-size",
            "4",
            "--pair-rate",
            "5",
            "--group-rate",
            "10",
            "--duration-secs",
            "2",
        ],
    ) {
        assert_complete(&r);
        assert_eq!(r["connections"], 18, "{r}");
    }
    for r in compare(
        out,
        &[],
        &[
            "idle",
            "--connections",
            "300",
            "--workers",
            "2",
            "--source-ips",
            "2",
            "--hold-secs",
            "1",
            "--settle-secs",
            "1",
            "--cycles",
            "2",
        ],
    ) {
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["workers"], 2, "{r}");
        let cycles = r["cycles"].as_array().unwrap();
        assert_eq!(cycles.len(), 2);
        assert!(cycles.iter().all(|c| c["opened"] == 300), "{r}");
        // Every connection costs the server some memory.
        assert!(r["rss_kib_per_connection"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["setup_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
}

/// A `larachat serve` on a free port with a fresh data dir; killed on drop.
struct Serve {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(larachat_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("LARACHAT_ADMIN_EMAIL", "smoke@example.com")
            .env("LARACHAT_ADMIN_PASSWORD", "smoke-password-123")
            .env("LARACHAT_REALTIME__MAX_FRAMES_PER_SEC", "1000000")
            .env("LARACHAT_LIMITS__ENABLED", "false")
            .env("LARACHAT_DEMO__ENABLED", "false")
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let url = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(u) = text
                .lines()
                .find_map(|l| l.strip_prefix("larachat listening on "))
            {
                break u.split_whitespace().next().unwrap().to_owned();
            }
            assert!(
                started.elapsed().as_secs() < 60,
                "the server did not start:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The subcommands against a server given by URL, with --server-pid, both encodings.
#[test]
fn standalone_runs_against_a_running_server() {
    let server = Serve::start();
    let out = tempfile::tempdir().unwrap();
    let pid = server.child.id().to_string();
    let run = |args: &[&str]| -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_larachat-loadtest"))
            .args(args)
            .args([
                "--url",
                &server.url,
                "--server-pid",
                &pid,
                "--json",
                "--no-progress",
            ])
            .arg("--out")
            .arg(out.path())
            .env("LARACHAT_ADMIN_EMAIL", "smoke@example.com")
            .env("LARACHAT_ADMIN_PASSWORD", "smoke-password-123")
            .env_remove("LOADTEST_KEY")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{args:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    };
    for enc in ["json", "msgpack"] {
        let t = run(&[
            "throughput",
            "--connections",
            "2",
            "--window",
            "4",
            "--duration-secs",
            "1",
            "--encoding",
            enc,
        ]);
        assert_eq!(t["encoding"], enc);
        assert!(t["acked"].as_u64().unwrap() > 0, "{t}");
        assert_eq!(t["errors"], 0, "{t}");
        assert!(t["server_rss_kib_after"].as_u64().unwrap() > 0, "{t}");
        let f = run(&[
            "fanout",
            "--subscribers",
            "5",
            "--messages",
            "10",
            "--window",
            "3",
            "--encoding",
            enc,
        ]);
        assert_eq!(f["deliveries"], 50, "{f}");
        assert_eq!(f["missing"], 0, "{f}");
    }
    // Every run appended its result and wrote its own JSON; runs with deliveries a plot.
    let lines = std::fs::read_to_string(out.path().join("results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 4);
    let svgs = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "svg")
        })
        .count();
    assert_eq!(svgs, 4, "one plot per run");
}
