//! `sendfile(2)` of a file range to a TCP socket: page cache to socket, no copy through user
//! space. The upload server sends pieces with it, the proxy stored blobs.

use std::io;
use std::os::fd::AsFd;
use tokio::io::Interest;
use tokio::net::TcpStream;

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
        match sendfile_some(stream, file, &mut offset, to) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `sendfile(2)` of bytes `[*offset, to)` as far as the socket takes them, advancing
/// `offset`; `WouldBlock` when it takes none, `UnexpectedEof` when the file ends first.
pub(crate) fn sendfile_some(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: &mut u64,
    to: u64,
) -> io::Result<usize> {
    let want = usize::try_from(to - *offset).unwrap_or(usize::MAX);
    let sent = stream.try_io(Interest::WRITABLE, || {
        rustix::fs::sendfile(stream.as_fd(), file, Some(&mut *offset), want)
            .map_err(io::Error::from)
    })?;
    if sent == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ends at {offset}, before {to}"),
        ));
    }
    Ok(sent)
}
