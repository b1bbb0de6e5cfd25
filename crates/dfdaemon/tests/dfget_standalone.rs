//! dfget without a daemon, as a real process, against an in-process origin.

use dragonfly_common::digest::{Algorithm, Digest};
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use testkit::data::random_bytes;
use testkit::origin::{Behavior, Origin, Resource};

const MIB: usize = 1 << 20;

async fn dfget(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dfget"))
        .args(args)
        .env("DFGET_DAEMON_SOCK", "/nonexistent/dfdaemon.sock")
        .output()
        .await
        .expect("run dfget")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha256, data).to_string()
}

/// No file but `keep` remains in `dir` (no temp files left behind).
fn assert_dir_holds_only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, keep, "unexpected files in {}", dir.display());
}

fn with(behavior: Behavior, data: Vec<u8>) -> Resource {
    Resource::bytes(data).with(behavior)
}

/// dfget of `data`, served at `path` with `behavior` (checked against its digest when
/// `digest`), succeeds with the right bytes; returns the origin for its counters.
async fn fetched_despite(
    path: &str,
    behavior: Behavior,
    data: &[u8],
    digest: bool,
) -> testkit::origin::RunningOrigin {
    let (_origin, o) = Origin::serving([(path, with(behavior, data.to_vec()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let mut args = vec![o.url(path), "-O".into(), out.display().to_string()];
    if digest {
        args.extend(["--digest".into(), sha256(data)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = dfget(&args).await;
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(&out).unwrap() == data);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_in_parallel_pieces_and_verifies_digest() {
    let (data, _origin, o) = Origin::random("/blob", 1, 21 * MIB + 123).await; // 6 pieces of 4 MiB, the last one short
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("blob");
    let digest = sha256(&data);
    let r = dfget(&[
        &o.url("/blob"),
        "-O",
        out.to_str().unwrap(),
        "--digest",
        &digest,
    ])
    .await;
    assert!(r.status.success(), "dfget failed: {}", stderr(&r));
    assert!(std::fs::read(&out).unwrap() == data, "content differs");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(
        stdout.contains(&format!("digest {digest} verified")),
        "stdout: {stdout}"
    );
    let (gets, bytes) = o.stats.for_path("/blob");
    assert_eq!(gets, 6, "one ranged GET per piece");
    assert_eq!(bytes, data.len() as u64, "origin served each byte once");
    assert_dir_holds_only(dir.path(), &["blob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_flag_form_and_headers_are_sent() {
    let data = random_bytes(2, 5 * MIB);
    let origin = Origin::new();
    let need_token = Behavior {
        require_header: Some(("x-token".into(), "s3cret".into())),
        ..Behavior::default()
    };
    origin.route("/private", with(need_token, data.clone()));
    let o = origin.spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let url = o.url("/private");
    let r = dfget(&["-u", &url, "-O", out.to_str().unwrap()]).await;
    assert!(!r.status.success());
    assert!(stderr(&r).contains("401 Unauthorized"), "{}", stderr(&r));
    let r = dfget(&[
        "-u",
        &url,
        "-O",
        out.to_str().unwrap(),
        "-H",
        "X-Token: s3cret",
    ])
    .await;
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(&out).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_without_range_gets_a_single_stream() {
    let data = random_bytes(3, 13 * MIB);
    let no_range = Behavior {
        ignore_range: true,
        ..Behavior::default()
    };
    let o = fetched_despite("/norange", no_range, &data, true).await;
    let (gets, bytes) = o.stats.for_path("/norange");
    assert_eq!(
        gets, 1,
        "the first ranged GET's 200 answer is used as the single stream"
    );
    assert_eq!(bytes, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_head_falls_back_to_get() {
    let data = random_bytes(4, 9 * MIB);
    let no_head = Behavior {
        refuse_head: true,
        ..Behavior::default()
    };
    let o = fetched_despite("/nohead", no_head, &data, false).await;
    // one-byte probe GET + 3 pieces
    assert_eq!(o.stats.for_path("/nohead"), (4, data.len() as u64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_5xx_on_pieces_is_retried() {
    let data = random_bytes(5, 12 * MIB);
    let flaky = Behavior {
        fail_first_gets: 2,
        ..Behavior::default()
    };
    let o = fetched_despite("/flaky", flaky, &data, true).await;
    assert!(
        o.stats.for_path("/flaky").0 >= 5,
        "failed GETs were retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_show_the_status_and_leave_nothing() {
    let origin = Origin::new();
    let forbidden = Behavior {
        status: Some(403),
        ..Behavior::default()
    };
    origin.route("/forbidden", with(forbidden, vec![1u8; 10]));
    let o = origin.spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    for (path, status) in [
        ("/missing", "404 Not Found"),
        ("/forbidden", "403 Forbidden"),
    ] {
        let r = dfget(&[&o.url(path), "-O", out.to_str().unwrap()]).await;
        assert_eq!(r.status.code(), Some(1));
        let err = stderr(&r);
        assert!(err.contains(status) && err.contains(path), "{path}: {err}");
    }
    assert_dir_holds_only(dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_mismatch_removes_partial_output() {
    let data = random_bytes(6, 10 * MIB);
    let origin = Origin::new();
    origin.route("/blob", Resource::bytes(data.clone()));
    let corrupt = Behavior::corrupt();
    origin.route("/corrupt", with(corrupt, data.clone()));
    let o = origin.spawn().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let out = out.to_str().unwrap();
    let wrong = sha256(b"something else");
    let r = dfget(&[&o.url("/blob"), "-O", out, "--digest", &wrong]).await;
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(
        err.contains("digest mismatch") && err.contains(&wrong) && err.contains(&sha256(&data)),
        "{err}"
    );
    assert_dir_holds_only(dir.path(), &[]);
    // An origin sending wrong bytes under the right digest is caught too.
    let r = dfget(&[&o.url("/corrupt"), "-O", out, "--digest", &sha256(&data)]).await;
    assert!(!r.status.success());
    assert!(stderr(&r).contains("digest mismatch"), "{}", stderr(&r));
    assert_dir_holds_only(dir.path(), &[]);
    // sha512 and crc32 digests are verified as well.
    for algo in [Algorithm::Sha512, Algorithm::Crc32] {
        let d = Digest::of(algo, &data).to_string();
        let r = dfget(&[&o.url("/blob"), "-O", out, "--digest", &d, "--overwrite"]).await;
        assert!(r.status.success(), "{d}: {}", stderr(&r));
        let bad = Digest::of(algo, b"x").to_string();
        let r = dfget(&[&o.url("/blob"), "-O", out, "--digest", &bad, "--overwrite"]).await;
        assert!(
            stderr(&r).contains("digest mismatch"),
            "{bad}: {}",
            stderr(&r)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_hits_the_timeout() {
    let slow = Behavior::slow(Duration::from_millis(500));
    let (_origin, o) = Origin::serving([("/slow", with(slow, random_bytes(7, MIB)))]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let r = dfget(&[
        &o.url("/slow"),
        "-O",
        out.to_str().unwrap(),
        "--timeout",
        "1s",
    ])
    .await;
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(err.contains("timed out after 1s"), "{err}");
    assert_dir_holds_only(dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_path_errors() {
    let (_origin, o) = Origin::serving([("/blob", Resource::bytes(b"hello".to_vec()))]).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/f");
    let r = dfget(&[&o.url("/blob"), "-O", missing.to_str().unwrap()]).await;
    assert!(!r.status.success());
    let want = format!(
        "output directory {} does not exist",
        dir.path().join("no/such/dir").display()
    );
    assert!(stderr(&r).contains(&want), "{}", stderr(&r));
    let existing = dir.path().join("existing");
    std::fs::write(&existing, b"precious").unwrap();
    let r = dfget(&[&o.url("/blob"), "-O", existing.to_str().unwrap()]).await;
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("already exists (use --overwrite"),
        "{}",
        stderr(&r)
    );
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"precious",
        "existing file untouched"
    );
    let r = dfget(&[&o.url("/blob"), "-O", dir.path().to_str().unwrap()]).await;
    assert!(stderr(&r).contains("is a directory"), "{}", stderr(&r));
    // Output checks come before any network traffic.
    assert_eq!(o.stats.requests(), 0);
    let r = dfget(&[
        &o.url("/blob"),
        "-O",
        existing.to_str().unwrap(),
        "--overwrite",
    ])
    .await;
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(std::fs::read(&existing).unwrap(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f");
    let out = out.to_str().unwrap();
    let r = dfget(&["example.com/file", "-O", out]).await;
    assert!(
        stderr(&r).contains("\"example.com/file\" is not an absolute URL"),
        "{}",
        stderr(&r)
    );
    let r = dfget(&["ftp://example.com/file", "-O", out]).await;
    assert!(
        stderr(&r).contains("unsupported scheme \"ftp\""),
        "{}",
        stderr(&r)
    );
    let r = dfget(&["http://127.0.0.1:9/x", "-O", out, "--digest", "md5:00"]).await;
    assert!(
        stderr(&r).contains("unsupported algorithm \"md5\""),
        "{}",
        stderr(&r)
    );
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/x");
    let r = dfget(&[&url, "-O", out]).await;
    assert_eq!(r.status.code(), Some(1));
    assert!(
        stderr(&r).contains(&format!("cannot reach {url}")),
        "{}",
        stderr(&r)
    );
    assert_dir_holds_only(dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_tiny_files() {
    let (_origin, o) = Origin::serving([
        ("/empty", Resource::bytes(Vec::<u8>::new())),
        ("/tiny", Resource::bytes(b"x".to_vec())),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    for (path, data) in [("/empty", &b""[..]), ("/tiny", &b"x"[..])] {
        let out = dir.path().join(path.trim_start_matches('/'));
        let r = dfget(&[
            &o.url(path),
            "-O",
            out.to_str().unwrap(),
            "--digest",
            &sha256(data),
        ])
        .await;
        assert!(r.status.success(), "{path}: {}", stderr(&r));
        assert_eq!(std::fs::read(&out).unwrap(), data);
    }
}
