//! The piece data path: a small HTTP/1.1 server for `GET /pieces/{task_id}/{number}` that sends
//! the bytes with `sendfile(2)` straight from the task's content file to the socket (no copy
//! through user space), with keep-alive.
//!
//! Only a validated task id and a piece number recorded in storage reach the file system.

use super::slots::Slot;
use super::{PIECE_CRC_HEADER, Shared};
use dragonfly_common::task_id::TaskId;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    drain: &crate::serve::Drain,
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
            let read = tokio::select! {
                r = stream.read_buf(&mut buf) => r?,
                // Draining: a piece in flight was sent; an idle connection closes.
                () = drain.idle_closes(super::DRAIN_IDLE), if buf.is_empty() => return Ok(()),
            };
            if read == 0 {
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
        // Draining: each piece goes out with `connection: close`, so the child never reuses a
        // connection this side is closing (it reconnects: see `serve_drained`).
        let close = close || drain.is_stopping();
        match send_piece(&mut stream, &shared, remote, &method, &path, close).await {
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
    close: bool,
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
        Ok(Err(e)) => {
            let msg = format!("{}\n", dragonfly_common::error::chain(&e));
            return Err(Ok(refuse("500 Internal Server Error", msg)));
        }
        Err(e) => return Err(Ok(refuse("500 Internal Server Error", format!("{e}\n")))),
    };
    let slot = shared.limits.acquire(remote.ip()).await;
    let _pin = shared.engine.pin(&task);
    let stats = shared.engine.upload_stats();
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let piece = Piece {
        task: &task,
        number,
        record: &record,
    };
    let result = send_body(stream, &storage, &piece, shared, &slot, remote, close).await;
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

/// The piece being sent.
struct Piece<'a> {
    task: &'a TaskId,
    number: u32,
    record: &'a crate::storage::PieceRecord,
}

async fn send_body(
    stream: &mut TcpStream,
    storage: &crate::storage::Storage,
    piece: &Piece<'_>,
    shared: &Shared,
    slot: &Slot,
    remote: SocketAddr,
    close: bool,
) -> Result<(), Result<Refusal, io::Error>> {
    let Piece {
        task,
        number,
        record,
    } = *piece;
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
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n{PIECE_CRC_HEADER}: {:08x}\r\n{}\r\n",
        record.length,
        record.crc32,
        if close { "connection: close\r\n" } else { "" }
    );
    let mut watch = Watch {
        slot,
        stall: shared.limits.stall_timeout,
        contended: shared.limits.contended_stall_timeout,
        last_progress: Instant::now(),
    };
    let explain = |e: io::Error| match e.kind() {
        io::ErrorKind::TimedOut => io::Error::new(
            e.kind(),
            format!("{remote}, piece {number} of task {task}: {e}"),
        ),
        // The file is shorter than its record says: drop the connection, the child sees a
        // short body and tries elsewhere.
        io::ErrorKind::UnexpectedEof => io::Error::new(
            e.kind(),
            format!("task {task}: content ends inside piece {number}"),
        ),
        _ => e,
    };
    watch
        .write_all(stream, head.as_bytes())
        .await
        .map_err(|e| Err(explain(e)))?;
    let rates = shared.limits.rates(remote.ip());
    let mut offset = record.offset;
    let end = record.offset + record.length;
    while offset < end {
        let n = (end - offset).min(SEND_CHUNK);
        for r in &rates {
            r.take(n).await;
        }
        // Waiting for the rate budget is this node's doing, not the child's.
        watch.last_progress = Instant::now();
        let to = offset + n;
        watch
            .sendfile(stream, &file, &mut offset, to)
            .await
            .map_err(|e| Err(explain(e)))?;
    }
    Ok(())
}

/// Watches one transfer for a child that stopped reading.
struct Watch<'a> {
    slot: &'a Slot,
    /// No byte taken this long: the transfer is dropped.
    stall: Duration,
    /// No byte taken this long while another request waits for the slot: dropped too.
    contended: Duration,
    /// When the socket last took bytes.
    last_progress: Instant,
}

impl Watch<'_> {
    /// Wait until `stream` takes bytes again, or fail with `TimedOut` when the child has read
    /// nothing for `stall`, or for `contended` while somebody waits for this slot.
    async fn writable(&self, stream: &TcpStream) -> io::Result<()> {
        let check_every = self.contended.min(self.stall);
        loop {
            if let Ok(ready) = tokio::time::timeout(check_every, stream.writable()).await {
                return ready;
            }
            let idle = self.last_progress.elapsed();
            let why = if idle >= self.stall {
                "stall timeout"
            } else if idle >= self.contended && self.slot.wanted() {
                "another request waits for the slot"
            } else {
                continue;
            };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the child read nothing for {idle:?} ({why})"),
            ));
        }
    }

    async fn write_all(&mut self, stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            self.writable(stream).await?;
            match stream.try_write(bytes) {
                Ok(n) => {
                    bytes = &bytes[n..];
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// [`crate::sendfile::sendfile`] of `[*offset, to)`, advancing `offset`, watched.
    async fn sendfile(
        &mut self,
        stream: &TcpStream,
        file: &std::fs::File,
        offset: &mut u64,
        to: u64,
    ) -> io::Result<()> {
        while *offset < to {
            self.writable(stream).await?;
            match crate::sendfile::sendfile_some(stream, file, offset, to) {
                Ok(_) => self.last_progress = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
