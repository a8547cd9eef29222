//! Abuse against the real binary (spawned, as an operator runs it): a descriptor limit of 256
//! with 300 idle sockets, and memory after 1,000 failed logins and 5,000 unauthenticated
//! WebSockets. Loopback only; sockets come from several 127.0.0.x source addresses so the
//! per-IP cap (default 256) does not refuse them.
//!
//! `LARACHAT_BIN=/path/to/larachat` runs these against another build (e.g. a release build,
//! or an older one to see the "before" figures); the numbers are printed either way.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::net::{TcpSocket, TcpStream};

/// A spawned `larachat serve`.
struct Proc {
    child: Child,
    base: String,
    admin: Option<String>,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Starts the binary under `sh -c "ulimit -n N; exec larachat serve …"` when `nofile` is
    /// set, with `env` as its only `LARACHAT_*` variables.
    fn start(nofile: Option<u32>, env: &[(&str, &str)]) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::var("LARACHAT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_larachat").to_owned());
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path());
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LARACHAT_")) {
            cmd.env_remove(k);
        }
        cmd.env("LARACHAT_LOG", "warn")
            .env("LARACHAT_DEMO__ENABLED", "false")
            .env("LARACHAT_STORAGE__SQLITE_SYNCHRONOUS", "normal");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn larachat");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut base = None;
        let mut admin = None;
        let want_admin = env
            .iter()
            .any(|(k, _)| *k == "LARACHAT_SERVER__ADMIN_LISTEN");
        while base.is_none() || (want_admin && admin.is_none()) {
            let line = lines
                .next()
                .expect("larachat exited before listening")
                .unwrap();
            if let Some(a) = line.strip_prefix("larachat listening on ") {
                base = Some(a.to_owned());
            } else if let Some(a) = line.strip_prefix("larachat admin listening on ") {
                admin = Some(a.to_owned());
            }
        }
        Proc {
            child,
            base: base.unwrap(),
            admin,
            _dir: dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// Resident memory in MiB, from `/proc/<pid>/status`.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server is running");
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb / 1024.0
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to).await
}

/// `GET url` from the source address `from`; the status, or `None` on a connection error or
/// after 2 s.
async fn status_from(from: &str, url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .local_address(Some(from.parse().unwrap()))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls `check` every 100 ms until it is true or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Raises this process's soft descriptor limit to its hard limit and returns it.
fn raise_own_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    let raise = matches!((l.current, l.maximum), (Some(cur), Some(max)) if max > cur);
    if raise {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: l.maximum,
                maximum: l.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_descriptor_limit_survives_300_idle_sockets() {
    let mut server = Proc::start(
        Some(256),
        &[
            ("LARACHAT_SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
            ("LARACHAT_SERVER__HEADER_TIMEOUT_SECS", "3"),
        ],
    );
    let to = server.addr();
    let admin = server.admin.clone().unwrap();
    // 300 idle sockets from two addresses (150 each, under the per-IP cap): more than the
    // process has descriptors for.
    let mut idle = Vec::new();
    for i in 0..300 {
        let from = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
        if let Ok(tcp) = connect_from(from, to).await {
            idle.push(tcp);
        }
    }
    println!("{} of 300 idle sockets connected", idle.len());
    // While they are open the admin listener answers the probes (its own connection budget).
    assert_eq!(
        status_from("127.0.0.1", &format!("{admin}/live")).await,
        Some(200)
    );
    assert_eq!(
        status_from("127.0.0.1", &format!("{admin}/ready")).await,
        Some(200)
    );
    // The header timeout frees the public listener; then it answers too.
    let public_live = format!("{}/live", server.base);
    let recovered = eventually(Duration::from_secs(15), || async {
        status_from("127.0.0.4", &public_live).await == Some(200)
    })
    .await;
    assert!(
        recovered,
        "/live on the public listener never answered again"
    );
    assert!(server.alive(), "the server died");
    drop(idle);
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("larachat_server_connections_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("connections refused at admission: {refused}");
    assert!(
        refused > 0.0,
        "the global cap never refused anything:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_back_off_and_the_server_recovers() {
    // A cap above the descriptor limit: accept() itself fails with EMFILE.
    let mut server = Proc::start(
        Some(128),
        &[
            ("LARACHAT_SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
            ("LARACHAT_SERVER__MAX_CONNECTIONS", "1000"),
            ("LARACHAT_SERVER__HEADER_TIMEOUT_SECS", "60"),
        ],
    );
    let to = server.addr();
    let mut idle = Vec::new();
    for i in 0..200 {
        let from = if i % 2 == 0 { "127.0.0.5" } else { "127.0.0.6" };
        if let Ok(tcp) = connect_from(from, to).await {
            idle.push(tcp);
        }
    }
    // Out of descriptors for 2 s: the accept loop must pause, not spin.
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the name.
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    };
    let pid = server.child.id();
    let before = cpu(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu(pid) - before;
    println!("CPU used while out of descriptors: {used:.2} s in 2 s");
    assert!(used < 1.0, "the accept loop spins: {used} s of CPU in 2 s");
    assert!(server.alive());
    drop(idle);
    let live = format!("{}/live", server.base);
    assert!(
        eventually(Duration::from_secs(10), || async {
            status_from("127.0.0.7", &live).await == Some(200)
        })
        .await,
        "the server did not recover after the sockets closed"
    );
    let admin = server.admin.clone().unwrap();
    let metrics = reqwest::get(format!("{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("larachat_server_accept_errors_total{")),
        "no accept error was counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_returns_near_the_baseline_after_failed_logins_and_idle_sockets() {
    const LOGINS: usize = 1_000;
    const SOCKETS: usize = 5_000;
    const SOURCES: usize = 25; // 200 sockets per source address, under the per-IP cap
    let nofile = raise_own_nofile();
    assert!(
        nofile >= 2 * SOCKETS as u64 + 1_000,
        "this test needs a descriptor limit of at least {} (hard limit here: {nofile})",
        2 * SOCKETS + 1_000
    );
    // Rate limits off: every login must reach argon2 (the worst case for memory); the login
    // throttle is tested in tests/limits.rs.
    let server = Proc::start(
        None,
        &[
            ("LARACHAT_REALTIME__AUTH_TIMEOUT_SECS", "120"),
            ("LARACHAT_LIMITS__ENABLED", "false"),
        ],
    );
    let http = reqwest::Client::new();
    let login = |i: usize| {
        let http = http.clone();
        let url = format!("{}/api/admin/login", server.base);
        async move {
            http.post(url)
                .json(&serde_json::json!({"email": format!("nobody{i}@example.com"), "password": "wrong password"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let ws_url = format!("ws://{}/realtime/v1", server.addr());
    let to = server.addr();
    let open_socket = |i: usize| {
        let ws_url = ws_url.clone();
        async move {
            let from = format!("127.0.1.{}", 1 + i % SOURCES);
            let tcp = connect_from(&from, to).await.ok()?;
            tokio_tungstenite::client_async(ws_url, tcp)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }
    };
    // Warm-up, so that lazily built state is in the baseline.
    for i in 0..10 {
        assert_eq!(login(i).await, 401);
    }
    let warm: Vec<_> = futures::stream::iter(0..20)
        .then(open_socket)
        .collect()
        .await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = server.rss_mib();

    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(0..LOGINS)
        .map(login)
        .buffer_unordered(4)
        .collect()
        .await;
    let after_logins = server.rss_mib();
    let failed = statuses.iter().filter(|s| **s == 401).count();
    println!(
        "{LOGINS} failed logins in {:.1} s: {failed} × 401, others {:?}; RSS {baseline:.1} → {after_logins:.1} MiB",
        started.elapsed().as_secs_f64(),
        statuses.iter().filter(|s| **s != 401).collect::<Vec<_>>()
    );
    assert_eq!(failed, LOGINS, "every login was checked and refused");

    let before_sockets = server.rss_mib();
    let sockets: Vec<_> = futures::stream::iter(0..SOCKETS)
        .map(open_socket)
        .buffer_unordered(64)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    let with_sockets = server.rss_mib();
    println!(
        "{} unauthenticated sockets open: RSS {before_sockets:.1} → {with_sockets:.1} MiB ({:.1} KiB per socket)",
        sockets.len(),
        (with_sockets - before_sockets) * 1024.0 / sockets.len().max(1) as f64
    );
    assert_eq!(sockets.len(), SOCKETS, "every socket was accepted");
    drop(sockets);

    let bound = baseline + 50.0;
    let mut last = server.rss_mib();
    let settled = eventually(Duration::from_secs(40), || {
        last = server.rss_mib();
        async move { last <= bound }
    })
    .await;
    println!(
        "after the abuse: RSS {last:.1} MiB (baseline {baseline:.1} MiB, bound {bound:.1} MiB)"
    );
    assert!(
        settled,
        "RSS {last:.1} MiB stayed more than 50 MiB above the baseline {baseline:.1} MiB"
    );
}
