//! The piece data path: a small HTTP/1.1 server for `GET /pieces/{task_id}/{number}` that sends
//! the bytes with `sendfile(2)` straight from the task's content file to the socket (no copy
//! through user space), with keep-alive.
//!
//! Only a validated task id and a piece number recorded in storage reach the file system.

use super::{PIECE_CRC_HEADER, Shared};
use dragonfly_common::task_id::TaskId;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Bytes handed to one `sendfile` call (and drawn from the rate limits at once).
const SEND_CHUNK: u64 = 1 << 20;

/// A response that is not piece bytes.
struct Refusal {
    status: &'static str,
    message: String,
}

fn refuse(status: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Serve HTTP/1.1 piece requests on one connection until it closes.
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    shared: std::sync::Arc<Shared>,
    remote: SocketAddr,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_len = loop {
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            if end.unwrap_or(buf.len()) > MAX_HEAD {
                let r = refuse(
                    "431 Request Header Fields Too Large",
                    "request head too large\n",
                );
                return write_refusal(&mut stream, &r, true).await;
            }
            if let Some(end) = end {
                break end;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(()); // closed between requests
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf[..head_len]);
        let (method, path, close) = match parsed {
            Ok(httparse::Status::Complete(_)) => {
                let close = req.version == Some(0)
                    || req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection")
                            && h.value.eq_ignore_ascii_case(b"close")
                    });
                let has_body = req.headers.iter().any(|h| {
                    (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                });
                if has_body {
                    let r = refuse("400 Bad Request", "piece requests have no body\n");
                    return write_refusal(&mut stream, &r, true).await;
                }
                (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    close,
                )
            }
            _ => {
                let r = refuse("400 Bad Request", "malformed HTTP/1.1 request\n");
                return write_refusal(&mut stream, &r, true).await;
            }
        };
        buf.drain(..head_len);
        match send_piece(&mut stream, &shared, remote, &method, &path).await {
            Ok(()) => {}
            Err(Ok(refusal)) => write_refusal(&mut stream, &refusal, close).await?,
            Err(Err(e)) => return Err(e),
        }
        if close {
            return Ok(());
        }
    }
}

async fn write_refusal(stream: &mut TcpStream, r: &Refusal, close: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n",
        r.status,
        r.message.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(r.message.as_bytes()).await
}

/// Send one piece, or say why not (`Err(Ok(..))`); `Err(Err(..))` is a broken connection.
async fn send_piece(
    stream: &mut TcpStream,
    shared: &Shared,
    remote: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(), Result<Refusal, io::Error>> {
    if method != "GET" {
        return Err(Ok(refuse(
            "405 Method Not Allowed",
            "only GET /pieces/{task}/{number}\n",
        )));
    }
    let Some((task, number)) = path
        .strip_prefix("/pieces/")
        .and_then(|rest| rest.split_once('/'))
    else {
        return Err(Ok(refuse(
            "404 Not Found",
            format!("no such resource {path:?}\n"),
        )));
    };
    let Ok(task) = task.parse::<TaskId>() else {
        return Err(Ok(refuse(
            "400 Bad Request",
            format!("{task:?} is not a task id\n"),
        )));
    };
    let Ok(number) = number.parse::<u32>() else {
        return Err(Ok(refuse(
            "400 Bad Request",
            format!("{number:?} is not a piece number\n"),
        )));
    };
    let storage = shared.engine.storage().clone();
    let (s, t) = (storage.clone(), task.clone());
    let record = match tokio::task::spawn_blocking(move || s.piece_record(&t, number)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            let msg = format!("task {task} has no piece {number} here\n");
            return Err(Ok(refuse("404 Not Found", msg)));
        }
        Ok(Err(e)) => return Err(Ok(refuse("500 Internal Server Error", format!("{e}\n")))),
        Err(e) => return Err(Ok(refuse("500 Internal Server Error", format!("{e}\n")))),
    };
    let _permit = (
        shared.limits.acquire(remote.ip()).await,
        shared.engine.pin(&task),
    );
    let stats = shared.engine.upload_stats();
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = send_body(stream, &storage, &task, number, &record, shared, remote).await;
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    match &result {
        Ok(()) => {
            stats.pieces.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(record.length, Ordering::Relaxed);
        }
        Err(Err(_)) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Err(Ok(_)) => {}
    }
    result
}

async fn send_body(
    stream: &mut TcpStream,
    storage: &crate::storage::Storage,
    task: &TaskId,
    number: u32,
    record: &crate::storage::PieceRecord,
    shared: &Shared,
    remote: SocketAddr,
) -> Result<(), Result<Refusal, io::Error>> {
    let content = storage.content_path(task);
    let file = match std::fs::File::open(&content) {
        Ok(f) => f,
        Err(e) => return Err(Ok(refuse("404 Not Found", format!("task {task}: {e}\n")))),
    };
    if !shared.engine.is_running(task) {
        let (s, t) = (storage.clone(), task.clone());
        tokio::task::spawn_blocking(move || s.touch(&t));
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n{PIECE_CRC_HEADER}: {:08x}\r\n\r\n",
        record.length, record.crc32
    );
    let stall = shared.limits.stall_timeout;
    let stalled = |what: &str| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{remote} read nothing of piece {number} of task {task} for {stall:?} ({what})"
            ),
        ))
    };
    match tokio::time::timeout(stall, stream.write_all(head.as_bytes())).await {
        Ok(r) => r.map_err(Err)?,
        Err(_) => return Err(stalled("head")),
    }
    let rates = shared.limits.rates(remote.ip());
    let mut offset = record.offset;
    let end = record.offset + record.length;
    while offset < end {
        let n = (end - offset).min(SEND_CHUNK);
        for r in &rates {
            r.take(n).await;
        }
        let Ok(sent) =
            tokio::time::timeout(stall, sendfile(stream, &file, offset, offset + n)).await
        else {
            return Err(stalled("body"));
        };
        sent.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                // The file is shorter than its record says: drop the connection, the
                // child sees a short body and tries elsewhere.
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("task {task}: content ends inside piece {number}"),
                )
            } else {
                e
            }
        })
        .map_err(Err)?;
        offset += n;
    }
    Ok(())
}

/// Send bytes `[from, to)` of `file` on `stream` with `sendfile(2)` (page cache to socket, no
/// copy through user space). A file that ends before `to` is `UnexpectedEof`.
pub(crate) async fn sendfile(
    stream: &TcpStream,
    file: &std::fs::File,
    from: u64,
    to: u64,
) -> io::Result<()> {
    let mut offset = from;
    while offset < to {
        stream.writable().await?;
        let want = usize::try_from(to - offset).unwrap_or(usize::MAX);
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream.as_fd(), file, Some(&mut offset), want)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends at {offset}, before {to}"),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
