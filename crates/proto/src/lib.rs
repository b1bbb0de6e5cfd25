//! Wire protocol (gRPC) shared by dfdaemon, dfget and the scheduler.
//!
//! The `.proto` sources live in `proto/` at the workspace root and are compiled by `build.rs` with
//! protox (no system `protoc`). See `docs/protocol.md` for the services, the message flow of a download
//! and the compatibility rules every change must follow.
//!
//! Module map (one module per protobuf package):
//! - [`common::v1`]: `Host`, `Task`, `Peer`, `Piece`, `Download`, `Range` and the enums.
//! - [`scheduler::v1`]: the `Scheduler` service (client: [`SchedulerClient`], server: [`SchedulerServer`]).
//! - [`dfdaemon::v1`]: the `DfdaemonUpload` (upload port) and `DfdaemonDownload` (unix socket) services.
//!
//! Server traits are generated with `async_trait`; implement them with `#[tonic::async_trait]`.
//!
//! Helpers: [`time`] (std <-> protobuf durations and timestamps), [`crc32`] (the textual
//! `"crc32:xxxxxxxx"` form of piece checksums), [`bitmap`] (the finished-pieces bitmap of `Peer`), plus
//! small methods on the generated types ([`common::v1::Piece::crc32_digest`], [`common::v1::Host::upload_addr`],
//! ...) and `From` conversions from each oneof payload into its oneof enum.

#![forbid(unsafe_code)]

/// Package `dragonfly.common.v1`.
pub mod common {
    /// Version 1 of the shared types.
    pub mod v1 {
        tonic::include_proto!("dragonfly.common.v1");
    }
}

/// Package `dragonfly.scheduler.v1`.
pub mod scheduler {
    /// Version 1 of the scheduler API.
    pub mod v1 {
        tonic::include_proto!("dragonfly.scheduler.v1");

        /// Response header of `AnnounceHost`, value `1`: the scheduler did not know the host
        /// before this announce (it restarted, expired the host, or never saw it), so it holds no
        /// peer of it; the daemon answers with `AnnounceFinishedTasks`. Older schedulers never set it.
        pub const HOST_UNKNOWN_HEADER: &str = "x-dragonfly-host-unknown";

        /// Most tasks one `AnnounceFinishedTasksRequest` may carry.
        pub const MAX_FINISHED_TASKS_PER_REQUEST: usize = 4096;
    }
}

/// Package `dragonfly.dfdaemon.v1`.
pub mod dfdaemon {
    /// Version 1 of the dfdaemon APIs.
    pub mod v1 {
        tonic::include_proto!("dragonfly.dfdaemon.v1");
    }
}

pub use common::v1::{
    Download, Host, HostType, Peer, PeerState, Piece, Priority, Range, Task, TaskState, TrafficType,
};
pub use dfdaemon::v1::dfdaemon_download_client::DfdaemonDownloadClient;
pub use dfdaemon::v1::dfdaemon_download_server::{DfdaemonDownload, DfdaemonDownloadServer};
pub use dfdaemon::v1::dfdaemon_upload_client::DfdaemonUploadClient;
pub use dfdaemon::v1::dfdaemon_upload_server::{DfdaemonUpload, DfdaemonUploadServer};
pub use scheduler::v1::scheduler_client::SchedulerClient;
pub use scheduler::v1::scheduler_server::{Scheduler, SchedulerServer};

/// Conversions between `std::time` types and the protobuf well-known `Duration` / `Timestamp`.
///
/// Unlike prost-types' `TryFrom` impls these never fail: they saturate or clamp, which is what a
/// protocol peer wants for timeouts and costs (a malformed value must not abort a download).
pub mod time {
    use std::time::{Duration, SystemTime};

    /// Converts a `std::time::Duration` to protobuf, saturating at the largest representable value.
    pub fn duration_to_proto(d: Duration) -> prost_types::Duration {
        match i64::try_from(d.as_secs()) {
            Ok(seconds) => prost_types::Duration {
                seconds,
                // subsec_nanos() < 1e9, always fits.
                nanos: d.subsec_nanos() as i32,
            },
            Err(_) => prost_types::Duration {
                seconds: i64::MAX,
                nanos: 999_999_999,
            },
        }
    }

    /// Converts a protobuf duration to `std::time::Duration`. Denormalized values (nanos out of range or
    /// of the opposite sign) are normalized first; negative durations become zero.
    pub fn duration_from_proto(d: &prost_types::Duration) -> Duration {
        let mut d = *d;
        d.normalize();
        if d.seconds < 0 || d.nanos < 0 {
            return Duration::ZERO;
        }
        Duration::new(d.seconds as u64, d.nanos as u32)
    }

    /// Like [`duration_from_proto`] for an optional field, mapping unset **and zero** to `None`
    /// (the protocol's "use the default" convention, e.g. `Download.timeout`).
    pub fn optional_duration_from_proto(d: Option<&prost_types::Duration>) -> Option<Duration> {
        d.map(duration_from_proto).filter(|d| !d.is_zero())
    }

    /// The current time as a protobuf timestamp.
    pub fn timestamp_now() -> prost_types::Timestamp {
        SystemTime::now().into()
    }

    /// Converts a protobuf timestamp to `SystemTime`; `None` if it is out of range for this platform.
    pub fn timestamp_to_system_time(t: &prost_types::Timestamp) -> Option<SystemTime> {
        SystemTime::try_from(*t).ok()
    }
}

/// The textual form of a piece checksum, `"crc32:xxxxxxxx"` (8 lowercase hex digits).
///
/// On the wire the checksum is a raw `fixed32` (`Piece.crc32`); this form is for logs, metadata and
/// HTTP headers. The algorithm is CRC-32/ISO-HDLC (IEEE), i.e. `crc32fast::hash`.
pub mod crc32 {
    /// Prefix of the textual form.
    pub const PREFIX: &str = "crc32:";

    /// Formats a checksum as `"crc32:xxxxxxxx"`.
    pub fn format_digest(crc: u32) -> String {
        format!("{PREFIX}{crc:08x}")
    }

    /// Parses `"crc32:xxxxxxxx"` (prefix case-insensitive, hex of either case) or bare `"xxxxxxxx"`.
    /// Exactly 8 hex digits are required.
    pub fn parse_digest(s: &str) -> Option<u32> {
        let s = s.trim();
        let hex = match s.get(..PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(PREFIX) => &s[PREFIX.len()..],
            _ => s,
        };
        if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(hex, 16).ok()
    }
}

/// The finished-pieces bitmap carried in `Peer.finished_pieces`: piece `n` is set iff bit `n % 8`
/// (least significant bit first) of byte `n / 8` is set. Trailing zero bytes may be omitted, so a
/// short bitmap simply means "those pieces are not finished".
///
/// Piece numbers are bounded by the task's piece count; [`set`](crate::bitmap::set) grows the buffer to `n / 8 + 1` bytes.
pub mod bitmap {
    /// Marks piece `n` as finished, growing the bitmap as needed.
    pub fn set(bitmap: &mut Vec<u8>, n: u32) {
        let byte = (n / 8) as usize;
        if bitmap.len() <= byte {
            bitmap.resize(byte + 1, 0);
        }
        bitmap[byte] |= 1 << (n % 8);
    }

    /// Whether piece `n` is finished.
    pub fn contains(bitmap: &[u8], n: u32) -> bool {
        bitmap
            .get((n / 8) as usize)
            .is_some_and(|b| b & (1 << (n % 8)) != 0)
    }

    /// Number of finished pieces.
    pub fn count(bitmap: &[u8]) -> u32 {
        bitmap.iter().map(|b| b.count_ones()).sum()
    }

    /// Finished piece numbers in ascending order.
    pub fn iter(bitmap: &[u8]) -> impl Iterator<Item = u32> + '_ {
        bitmap.iter().enumerate().flat_map(|(i, &b)| {
            (0..8u32)
                .filter(move |bit| b & (1 << bit) != 0)
                .map(move |bit| i as u32 * 8 + bit)
        })
    }

    /// Builds a bitmap from piece numbers (any order, duplicates allowed).
    pub fn from_numbers(numbers: impl IntoIterator<Item = u32>) -> Vec<u8> {
        let mut bitmap = Vec::new();
        for n in numbers {
            set(&mut bitmap, n);
        }
        bitmap
    }
}

mod impls {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use crate::common::v1::{Download, Host, HostType, Peer, Piece, Priority, Range};
    use crate::dfdaemon::v1 as df;
    use crate::scheduler::v1 as sch;

    impl Piece {
        /// End offset (exclusive) of the piece: `offset + length`.
        pub fn end(&self) -> u64 {
            self.offset.saturating_add(self.length)
        }

        /// The checksum as `"crc32:xxxxxxxx"`, or `None` if the piece carries none.
        pub fn crc32_digest(&self) -> Option<String> {
            self.crc32.map(crate::crc32::format_digest)
        }

        /// Whether the piece carries a checksum and it equals `actual` (the CRC-32 of the bytes received).
        /// A piece without a checksum never verifies.
        pub fn crc32_matches(&self, actual: u32) -> bool {
            self.crc32 == Some(actual)
        }

        /// The download cost as a `std::time::Duration` (zero if unset).
        pub fn cost_duration(&self) -> Duration {
            self.cost
                .as_ref()
                .map(crate::time::duration_from_proto)
                .unwrap_or_default()
        }
    }

    impl Range {
        /// End offset (exclusive): `start + length`.
        pub fn end(&self) -> u64 {
            self.start.saturating_add(self.length)
        }

        /// Whether the range overlaps `[offset, offset + length)` (e.g. a piece).
        pub fn overlaps(&self, offset: u64, length: u64) -> bool {
            length > 0
                && self.length > 0
                && offset < self.end()
                && self.start < offset.saturating_add(length)
        }
    }

    impl From<Range> for std::ops::Range<u64> {
        fn from(r: Range) -> Self {
            r.start..r.end()
        }
    }

    impl Host {
        /// Whether this host is a seed peer.
        pub fn is_seed(&self) -> bool {
            self.r#type() == HostType::Seed
        }

        /// The port serving piece bytes: `download_port`, or `upload_port` when it is 0.
        pub fn piece_data_port(&self) -> u32 {
            if self.download_port != 0 {
                self.download_port
            } else {
                self.upload_port
            }
        }

        /// Socket address of the upload server (`DfdaemonUpload` gRPC); `None` if `ip` does not parse
        /// or the port is out of range.
        pub fn upload_addr(&self) -> Option<SocketAddr> {
            socket_addr(&self.ip, self.upload_port)
        }

        /// Socket address of the piece data path (see [`Host::piece_data_port`]).
        pub fn piece_data_addr(&self) -> Option<SocketAddr> {
            socket_addr(&self.ip, self.piece_data_port())
        }

        /// `http://ip:port` of the upload server, ready for `Endpoint::from_shared` /
        /// `DfdaemonUploadClient::connect` (IPv6 addresses are bracketed).
        pub fn upload_endpoint(&self) -> Option<String> {
            self.upload_addr().map(|a| format!("http://{a}"))
        }
    }

    fn socket_addr(ip: &str, port: u32) -> Option<SocketAddr> {
        let ip: IpAddr = ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
    }

    impl Peer {
        /// Whether the peer has finished piece `n` (reads the `finished_pieces` bitmap).
        pub fn has_piece(&self, n: u32) -> bool {
            crate::bitmap::contains(&self.finished_pieces, n)
        }
    }

    impl Priority {
        /// Maps a raw wire value to the priority to act on: unknown and unspecified become `Normal`.
        pub fn effective(raw: i32) -> Priority {
            match Priority::try_from(raw) {
                Ok(Priority::Unspecified) | Err(_) => Priority::Normal,
                Ok(p) => p,
            }
        }
    }

    impl Download {
        /// The overall timeout, or `None` when unset or zero (use the daemon's default).
        pub fn timeout_duration(&self) -> Option<Duration> {
            crate::time::optional_duration_from_proto(self.timeout.as_ref())
        }

        /// The priority to act on (unspecified or unknown values become [`Priority::Normal`]).
        pub fn effective_priority(&self) -> Priority {
            Priority::effective(self.priority)
        }
    }

    /// `impl From<Payload> for OneofEnum` for every variant, so `Request::from(msg)` / `msg.into()` work.
    macro_rules! oneof_from {
        ($enum:path { $($variant:ident($ty:ty)),* $(,)? }) => {
            $(impl From<$ty> for $enum {
                fn from(v: $ty) -> Self {
                    Self::$variant(v)
                }
            })*
        };
    }

    oneof_from!(sch::announce_peer_request::Request {
        RegisterPeerRequest(sch::RegisterPeerRequest),
        DownloadPeerStartedRequest(sch::DownloadPeerStartedRequest),
        DownloadPeerBackToSourceStartedRequest(sch::DownloadPeerBackToSourceStartedRequest),
        RescheduleRequest(sch::RescheduleRequest),
        DownloadPeerFinishedRequest(sch::DownloadPeerFinishedRequest),
        DownloadPeerBackToSourceFinishedRequest(sch::DownloadPeerBackToSourceFinishedRequest),
        DownloadPeerFailedRequest(sch::DownloadPeerFailedRequest),
        DownloadPeerBackToSourceFailedRequest(sch::DownloadPeerBackToSourceFailedRequest),
        DownloadPieceFinishedRequest(sch::DownloadPieceFinishedRequest),
        DownloadPieceBackToSourceFinishedRequest(sch::DownloadPieceBackToSourceFinishedRequest),
        DownloadPieceFailedRequest(sch::DownloadPieceFailedRequest),
        DownloadPieceBackToSourceFailedRequest(sch::DownloadPieceBackToSourceFailedRequest),
        MoreParentsRequest(sch::MoreParentsRequest),
    });

    oneof_from!(sch::announce_peer_response::Response {
        EmptyTaskResponse(sch::EmptyTaskResponse),
        NormalTaskResponse(sch::NormalTaskResponse),
        NeedBackToSourceResponse(sch::NeedBackToSourceResponse),
    });

    oneof_from!(df::download_task_response::Response {
        DownloadTaskStartedResponse(df::DownloadTaskStartedResponse),
        DownloadPieceFinishedResponse(df::DownloadPieceFinishedResponse),
    });

    impl sch::AnnouncePeerRequest {
        /// Builds a stream message for peer `peer_id` of task `task_id` on host `host_id`.
        pub fn new(
            host_id: impl Into<String>,
            task_id: impl Into<String>,
            peer_id: impl Into<String>,
            request: impl Into<sch::announce_peer_request::Request>,
        ) -> Self {
            Self {
                host_id: host_id.into(),
                task_id: task_id.into(),
                peer_id: peer_id.into(),
                request: Some(request.into()),
            }
        }
    }

    impl sch::AnnouncePeerResponse {
        /// Wraps a response payload.
        pub fn new(response: impl Into<sch::announce_peer_response::Response>) -> Self {
            Self {
                response: Some(response.into()),
            }
        }
    }

    impl df::DownloadTaskResponse {
        /// Builds a stream message for peer `peer_id` of task `task_id` on host `host_id`.
        pub fn new(
            host_id: impl Into<String>,
            task_id: impl Into<String>,
            peer_id: impl Into<String>,
            response: impl Into<df::download_task_response::Response>,
        ) -> Self {
            Self {
                host_id: host_id.into(),
                task_id: task_id.into(),
                peer_id: peer_id.into(),
                response: Some(response.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn duration_round_trip_and_clamping() {
        let d = Duration::new(5, 250_000_000);
        let p = time::duration_to_proto(d);
        assert_eq!((p.seconds, p.nanos), (5, 250_000_000));
        assert_eq!(time::duration_from_proto(&p), d);

        let max = time::duration_to_proto(Duration::MAX);
        assert_eq!(max.seconds, i64::MAX);

        let neg = prost_types::Duration {
            seconds: -3,
            nanos: 0,
        };
        assert_eq!(time::duration_from_proto(&neg), Duration::ZERO);

        // Denormalized: 1s + 1.5e9ns = 2.5s.
        let denorm = prost_types::Duration {
            seconds: 1,
            nanos: 1_500_000_000,
        };
        assert_eq!(
            time::duration_from_proto(&denorm),
            Duration::from_millis(2500)
        );

        assert_eq!(time::optional_duration_from_proto(None), None);
        assert_eq!(
            time::optional_duration_from_proto(Some(&prost_types::Duration::default())),
            None
        );
    }

    #[test]
    fn timestamp_round_trip() {
        let now = std::time::SystemTime::now();
        let ts: prost_types::Timestamp = now.into();
        assert_eq!(time::timestamp_to_system_time(&ts), Some(now));
    }

    #[test]
    fn crc32_text_form() {
        assert_eq!(crc32::format_digest(0x0000_abcd), "crc32:0000abcd");
        assert_eq!(crc32::parse_digest("crc32:0000abcd"), Some(0xabcd));
        assert_eq!(crc32::parse_digest("CRC32:DEADBEEF"), Some(0xdead_beef));
        assert_eq!(crc32::parse_digest("deadbeef"), Some(0xdead_beef));
        assert_eq!(crc32::parse_digest("crc32:abc"), None);
        assert_eq!(crc32::parse_digest("crc32:+eadbeef"), None);
        assert_eq!(crc32::parse_digest("sha256:deadbeef"), None);

        let piece = Piece {
            crc32: Some(0),
            ..Default::default()
        };
        assert_eq!(piece.crc32_digest().as_deref(), Some("crc32:00000000"));
        assert!(piece.crc32_matches(0));
        assert!(!Piece::default().crc32_matches(0));
    }

    #[test]
    fn bitmap_ops() {
        let mut b = Vec::new();
        bitmap::set(&mut b, 0);
        bitmap::set(&mut b, 9);
        bitmap::set(&mut b, 9);
        bitmap::set(&mut b, 23);
        assert_eq!(b, vec![0b0000_0001, 0b0000_0010, 0b1000_0000]);
        assert!(bitmap::contains(&b, 9));
        assert!(!bitmap::contains(&b, 8));
        assert!(!bitmap::contains(&b, 1000));
        assert_eq!(bitmap::count(&b), 3);
        assert_eq!(bitmap::iter(&b).collect::<Vec<_>>(), vec![0, 9, 23]);
        assert_eq!(bitmap::from_numbers([23, 0, 9]), b);

        let peer = Peer {
            finished_pieces: b,
            ..Default::default()
        };
        assert!(peer.has_piece(23) && !peer.has_piece(22));
    }

    #[test]
    fn host_addresses() {
        let mut host = Host {
            ip: "10.0.0.7".into(),
            upload_port: 65002,
            ..Default::default()
        };
        assert_eq!(host.piece_data_port(), 65002);
        assert_eq!(
            host.upload_endpoint().as_deref(),
            Some("http://10.0.0.7:65002")
        );
        host.download_port = 65004;
        assert_eq!(
            host.piece_data_addr(),
            Some("10.0.0.7:65004".parse().unwrap())
        );
        host.ip = "::1".into();
        assert_eq!(
            host.upload_endpoint().as_deref(),
            Some("http://[::1]:65002")
        );
        host.upload_port = 70000;
        assert_eq!(host.upload_addr(), None);
        host.ip = "not-an-ip".into();
        assert_eq!(host.piece_data_addr(), None);
        assert!(!host.is_seed());
        host.set_type(HostType::Seed);
        assert!(host.is_seed());
    }

    #[test]
    fn range_and_priority() {
        let r = Range {
            start: 10,
            length: 5,
        };
        assert_eq!(r.end(), 15);
        assert!(r.overlaps(14, 100));
        assert!(!r.overlaps(15, 100));
        assert!(!r.overlaps(0, 10));
        assert!(r.overlaps(0, 11));
        assert_eq!(std::ops::Range::from(r), 10..15);

        assert_eq!(Priority::effective(0), Priority::Normal);
        assert_eq!(Priority::effective(42), Priority::Normal);
        assert_eq!(Priority::effective(Priority::High as i32), Priority::High);
        let d = Download {
            timeout: Some(time::duration_to_proto(Duration::from_secs(30))),
            ..Default::default()
        };
        assert_eq!(d.timeout_duration(), Some(Duration::from_secs(30)));
        assert_eq!(d.effective_priority(), Priority::Normal);
    }
}
