//! Ports for test servers.

/// A TCP port free on 127.0.0.1 right now.
///
/// The binaries' configs take a port from 1 up (`Port` refuses 0), so a process cannot be told
/// "any port" and asked which it got; this is the one place tests pick one. Prefer passing an
/// already-bound listener where an API takes one (in-process servers).
pub fn free_port() -> u16 {
    try_free_port().expect("bind 127.0.0.1:0 for a free port")
}

/// [`free_port`], with the error of binding `127.0.0.1:0`.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
