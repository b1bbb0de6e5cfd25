//! Config keys that change what a real daemon does: the download rate limits and
//! `keepStorage` (each test fails when its key is accepted and ignored).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use testkit::data::random_bytes;
use testkit::origin::{Origin, Resource};

const MIB: usize = 1 << 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    child: Child,
    dir: PathBuf,
    upload_port: u16,
}

impl Daemon {
    /// A daemon in `dir` with the usual test config plus `download` keys (`key: value` lines)
    /// and top-level `keepStorage`.
    fn start(dir: &Path, parents: &[u16], download: &[&str], keep_storage: bool) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let upload_port = free_port();
        let parents: Vec<String> = parents
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let cfg = format!(
            "dataDir: {d}/data\nlogDir: {d}/log\ngcInterval: 1m\nkeepStorage: {keep_storage}\n\
             upload:\n  tcpListen:\n    listen: 127.0.0.1\n    port: {upload_port}\n\
             download:\n  unixListen:\n    socket: {d}/dfdaemon.sock\n  parents: [{p}]\n{x}",
            d = dir.display(),
            p = parents.join(", "),
            x = download
                .iter()
                .map(|l| format!("  {l}\n"))
                .collect::<String>(),
        );
        std::fs::write(dir.join("dfget.yaml"), cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dfget"))
            .args(["daemon", "--config"])
            .arg(dir.join("dfget.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            upload_port,
        };
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(d.socket()).is_ok() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon in {} did not start: {}",
            dir.display(),
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        );
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("dfdaemon.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/core.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait for the exit: the graceful shutdown.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success(), "kill -TERM {pid}");
        for _ in 0..200 {
            if let Some(code) = self.child.try_wait().unwrap() {
                assert!(code.success(), "daemon exited with {code}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn dfget(d: &Daemon, url: &str, out: &Path) -> Output {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args([url, "-O", out.to_str().unwrap()])
        .env("DFGET_DAEMON_SOCK", d.socket())
        .output()
        .await
        .unwrap();
    assert!(
        o.status.success(),
        "dfget failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// [`dfget`] to an `out` that may exist from an earlier run.
async fn dfget_again(d: &Daemon, url: &str, out: &Path) -> Output {
    let _ = std::fs::remove_file(out);
    dfget(d, url, out).await
}

// Under a 2 MiB/s cap, 8 MiB takes at least 3 s (the bucket starts with one second's worth);
// unlimited on loopback it takes well under 1 s. A lower bound is not flaky on a slow machine.
const CAP: &str = "2Mi";
const AT_LEAST: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_rate_limit_caps_a_download_from_the_source() {
    let data = random_bytes(51, 8 * MIB);
    let origin = Origin::new();
    origin.route("/file", Resource::bytes(data.clone()));
    let o = origin.spawn().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let limit = format!("totalRateLimit: {CAP}");
    let d = Daemon::start(&work.path().join("a"), &[], &[&limit], false);
    let out = work.path().join("out");
    let t0 = Instant::now();
    dfget(&d, &o.url("/file"), &out).await;
    let took = t0.elapsed();
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(
        took >= AT_LEAST,
        "8 MiB under download.totalRateLimit {CAP}/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_rate_limit_caps_a_download_from_a_parent() {
    let data = random_bytes(52, 8 * MIB);
    let origin = Origin::new();
    origin.route("/file", Resource::bytes(data.clone()));
    let o = origin.spawn().await.unwrap();
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let a = Daemon::start(&work.path().join("a"), &[], &[], true);
    dfget(&a, &url, &work.path().join("out-a")).await;
    let limit = format!("perPeerRateLimit: {CAP}");
    let b = Daemon::start(&work.path().join("b"), &[a.upload_port], &[&limit], false);
    let out = work.path().join("out-b");
    let t0 = Instant::now();
    dfget(&b, &url, &out).await;
    let took = t0.elapsed();
    assert!(std::fs::read(&out).unwrap() == data);
    assert_eq!(
        o.stats.for_path("/file").1,
        data.len() as u64,
        "b took every byte from its parent"
    );
    assert!(
        took >= AT_LEAST,
        "8 MiB from a parent under download.perPeerRateLimit {CAP}/s took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_storage_decides_whether_tasks_survive_a_clean_exit() {
    let data = random_bytes(53, 2 * MIB + 5);
    let origin = Origin::new();
    origin.route("/file", Resource::bytes(data.clone()));
    let o = origin.spawn().await.unwrap();
    let url = o.url("/file");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("a");
    let out = work.path().join("out");
    let served = || o.stats.for_path("/file").1 / data.len() as u64;

    // keepStorage: true: the task is still there after SIGTERM and a new start.
    let d = Daemon::start(&dir, &[], &[], true);
    dfget_again(&d, &url, &out).await;
    d.stop();
    let d = Daemon::start(&dir, &[], &[], true);
    dfget_again(&d, &url, &out).await;
    assert_eq!(
        served(),
        1,
        "keepStorage: true served the second copy from storage"
    );
    d.stop();

    // keepStorage: false: the clean exit deletes it, so the next start asks the origin again.
    let d = Daemon::start(&dir, &[], &[], false);
    dfget_again(&d, &url, &out).await;
    assert_eq!(served(), 1, "still stored when the daemon started");
    d.stop();
    let d = Daemon::start(&dir, &[], &[], false);
    dfget_again(&d, &url, &out).await;
    assert!(std::fs::read(&out).unwrap() == data);
    let log = d.log();
    assert!(log.contains("stored tasks deleted on exit"), "{log}");
    // metrics.enable defaults to true and nothing listens yet: the daemon says so.
    assert!(
        log.contains("metrics.enable is set but nothing serves"),
        "{log}"
    );
    assert_eq!(
        served(),
        2,
        "keepStorage: false deleted the task on the clean exit"
    );
}
