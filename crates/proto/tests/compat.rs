//! Wire-format tests: round trips of every oneof variant, and forward/backward compatibility between
//! "older" and "newer" versions of messages (unknown fields, unknown oneof variants, unknown enum values).

use dragonfly_proto::common::v1::{
    Download, Host, HostType, PeerState, Piece, Priority, Range, TrafficType,
};
use dragonfly_proto::dfdaemon::v1::{
    DownloadPieceFinishedResponse, DownloadTaskResponse, DownloadTaskStartedResponse,
    SyncPiecesResponse, download_task_response,
};
use dragonfly_proto::scheduler::v1::{
    AnnouncePeerRequest, AnnouncePeerResponse, CandidateParent,
    DownloadPeerBackToSourceFailedRequest, DownloadPeerBackToSourceFinishedRequest,
    DownloadPeerBackToSourceStartedRequest, DownloadPeerFailedRequest, DownloadPeerFinishedRequest,
    DownloadPeerStartedRequest, DownloadPieceBackToSourceFailedRequest,
    DownloadPieceBackToSourceFinishedRequest, DownloadPieceFailedRequest,
    DownloadPieceFinishedRequest, EmptyTaskResponse, MoreParentsRequest, NeedBackToSourceResponse,
    NormalTaskResponse, RegisterPeerRequest, RescheduleRequest, announce_peer_request::Request,
    announce_peer_response::Response,
};
use dragonfly_proto::time::duration_to_proto;
use prost::Message;
use std::time::Duration;

fn piece(number: u32) -> Piece {
    Piece {
        number,
        offset: u64::from(number) * 4 * 1024 * 1024,
        length: 4 * 1024 * 1024,
        crc32: Some(0xdead_beef ^ number),
        parent_id: "parent-peer".into(),
        traffic_type: TrafficType::RemotePeer as i32,
        cost: Some(duration_to_proto(Duration::from_millis(12))),
        created_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
    }
}

fn download() -> Download {
    Download {
        url: "https://registry.example.com/v2/library/alpine/blobs/sha256:abcd".into(),
        digest: Some("sha256:abcd".into()),
        range: Some(Range {
            start: 0,
            length: 1024,
        }),
        tag: "t".into(),
        application: "app".into(),
        piece_length: Some(4 * 1024 * 1024),
        output_path: Some("/tmp/out".into()),
        timeout: Some(duration_to_proto(Duration::from_secs(30))),
        disable_back_to_source: false,
        need_back_to_source: true,
        priority: Priority::High as i32,
        filtered_query_params: vec!["X-Amz-Signature".into(), "Expires".into()],
        request_header: [("authorization".to_string(), "Bearer x".to_string())].into(),
        prefetch: true,
        overwrite: true,
    }
}

fn all_request_variants() -> Vec<Request> {
    vec![
        RegisterPeerRequest {
            download: Some(download()),
        }
        .into(),
        DownloadPeerStartedRequest {}.into(),
        DownloadPeerBackToSourceStartedRequest {
            description: Some("no parents".into()),
        }
        .into(),
        RescheduleRequest {
            candidate_parents_blocklist: vec!["p1".into(), "p2".into()],
            description: Some("parent p1 sent corrupt data".into()),
        }
        .into(),
        DownloadPeerFinishedRequest {
            content_length: 123_456_789,
            piece_count: 30,
        }
        .into(),
        DownloadPeerBackToSourceFinishedRequest {
            content_length: 0,
            piece_count: 0,
        }
        .into(),
        DownloadPeerFailedRequest {
            description: Some("timeout".into()),
        }
        .into(),
        DownloadPeerBackToSourceFailedRequest {
            description: Some("origin said 404".into()),
            status_code: Some(404),
            temporary: false,
        }
        .into(),
        DownloadPieceFinishedRequest {
            piece: Some(piece(3)),
        }
        .into(),
        DownloadPieceBackToSourceFinishedRequest {
            piece: Some(piece(0)),
        }
        .into(),
        DownloadPieceFailedRequest {
            piece_number: 7,
            parent_id: "p3".into(),
            temporary: true,
            description: Some("connection reset".into()),
        }
        .into(),
        DownloadPieceBackToSourceFailedRequest {
            piece_number: 0,
            description: None,
            status_code: Some(503),
            temporary: true,
        }
        .into(),
        MoreParentsRequest {}.into(),
    ]
}

#[test]
fn announce_peer_request_round_trips_every_variant() {
    let variants = all_request_variants();
    assert_eq!(variants.len(), 13, "one per oneof variant");
    let mut seen_tags = std::collections::HashSet::new();
    for variant in variants {
        let msg = AnnouncePeerRequest::new("host-1", "task-1", "peer-1", variant);
        let bytes = msg.encode_to_vec();
        let decoded = AnnouncePeerRequest::decode(bytes.as_slice()).expect("decode");
        assert_eq!(decoded, msg);
        assert_eq!(decoded.host_id, "host-1");
        assert_eq!(decoded.task_id, "task-1");
        assert_eq!(decoded.peer_id, "peer-1");
        assert!(decoded.request.is_some());
        // Each variant uses a distinct field number: the key byte right after the three id strings.
        // Keys are varints of (number << 3 | 2): one byte for 4..=15; for 16 the first byte is
        // 0x82 (continuation bit set), whose upper bits still read 16.
        let ids_len = [&msg.host_id, &msg.task_id, &msg.peer_id]
            .iter()
            .map(|s| 2 + s.len())
            .sum::<usize>();
        seen_tags.insert(bytes[ids_len] >> 3);
    }
    assert_eq!(seen_tags, (4u8..=16).collect());
}

#[test]
fn empty_variant_is_still_present_on_the_wire() {
    // DownloadPeerStartedRequest has no fields, yet the variant must survive a round trip
    // (prost encodes a zero-length submessage for a set oneof).
    let msg = AnnouncePeerRequest::new("h", "t", "p", DownloadPeerStartedRequest {});
    let decoded = AnnouncePeerRequest::decode(msg.encode_to_vec().as_slice()).unwrap();
    assert!(matches!(
        decoded.request,
        Some(Request::DownloadPeerStartedRequest(_))
    ));
}

#[test]
fn announce_peer_response_round_trips_every_variant() {
    let parent = CandidateParent {
        id: "seed-peer-1".into(),
        host: Some(Host {
            id: "seed-host".into(),
            r#type: HostType::Seed as i32,
            hostname: "seed-0".into(),
            ip: "10.0.0.1".into(),
            upload_port: 65002,
            download_port: 65002,
            idc: "idc-a".into(),
            location: "cn|zj|hz".into(),
            max_upload_rate: 1 << 30,
            concurrent_upload_limit: 50,
            concurrent_upload_count: 3,
            ..Default::default()
        }),
        finished_piece_count: 10,
        state: PeerState::Running as i32,
    };
    let variants: Vec<Response> = vec![
        EmptyTaskResponse {}.into(),
        NormalTaskResponse {
            candidate_parents: vec![parent.clone(), parent],
            content_length: Some(40 << 20),
            piece_length: Some(4 << 20),
            piece_count: Some(10),
        }
        .into(),
        NeedBackToSourceResponse {
            description: Some("no peer has the task".into()),
        }
        .into(),
    ];
    for v in variants {
        let msg = AnnouncePeerResponse::new(v);
        let decoded = AnnouncePeerResponse::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, msg);
    }
}

#[test]
fn download_task_response_round_trips() {
    let started = DownloadTaskResponse::new(
        "h",
        "t",
        "p",
        DownloadTaskStartedResponse {
            content_length: Some(0),
            pieces: vec![piece(0), piece(1)],
            is_finished: false,
            piece_length: Some(4 << 20),
        },
    );
    let finished = DownloadTaskResponse::new(
        "h",
        "t",
        "p",
        DownloadPieceFinishedResponse {
            piece: Some(piece(2)),
        },
    );
    for msg in [started, finished] {
        let decoded = DownloadTaskResponse::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, msg);
    }
    // `optional` keeps "known empty" (Some(0)) apart from "unknown" (None).
    let unknown = DownloadTaskStartedResponse::default();
    let decoded = DownloadTaskStartedResponse::decode(unknown.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.content_length, None);
    match DownloadTaskResponse::decode(
        DownloadTaskResponse::new(
            "h",
            "t",
            "p",
            DownloadTaskStartedResponse {
                content_length: Some(0),
                ..Default::default()
            },
        )
        .encode_to_vec()
        .as_slice(),
    )
    .unwrap()
    .response
    {
        Some(download_task_response::Response::DownloadTaskStartedResponse(s)) => {
            assert_eq!(s.content_length, Some(0))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn crc32_zero_is_distinct_from_missing() {
    let with_zero = Piece {
        crc32: Some(0),
        ..Default::default()
    };
    let without = Piece::default();
    let a = Piece::decode(with_zero.encode_to_vec().as_slice()).unwrap();
    let b = Piece::decode(without.encode_to_vec().as_slice()).unwrap();
    assert_eq!(a.crc32, Some(0));
    assert_eq!(b.crc32, None);
    // fixed32 on the wire: key 0x25 (field 4, wire type 5) + 4 little-endian bytes.
    let p = Piece {
        crc32: Some(0x1234_5678),
        ..Default::default()
    };
    assert_eq!(p.encode_to_vec(), vec![0x25, 0x78, 0x56, 0x34, 0x12]);
}

// ---------------------------------------------------------------------------------------------------
// Forward compatibility: a NEWER sender (test-only message types below, as a future version of the proto
// would generate them) talks to the CURRENT receiver.
// ---------------------------------------------------------------------------------------------------

/// What a future `AnnouncePeerRequest` might look like: a new top-level field and a new oneof variant.
#[derive(Clone, PartialEq, prost::Message)]
struct FutureAnnouncePeerRequest {
    #[prost(string, tag = "1")]
    host_id: String,
    #[prost(string, tag = "2")]
    task_id: String,
    #[prost(string, tag = "3")]
    peer_id: String,
    #[prost(oneof = "future::Request", tags = "4, 99")]
    request: Option<future::Request>,
    #[prost(uint64, tag = "50")]
    trace_flags: u64,
    #[prost(message, optional, tag = "51")]
    extra: Option<FutureExtra>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FutureExtra {
    #[prost(string, repeated, tag = "1")]
    labels: Vec<String>,
    #[prost(fixed64, tag = "2")]
    checksum: u64,
}

mod future {
    use dragonfly_proto::scheduler::v1::RegisterPeerRequest;

    #[allow(clippy::large_enum_variant)] // mirrors the generated oneof, which is not boxed either
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "4")]
        Register(RegisterPeerRequest),
        #[prost(message, tag = "99")]
        SomethingNew(super::FutureExtra),
    }
}

fn future_extra() -> FutureExtra {
    FutureExtra {
        labels: vec!["a".into(), "b".into()],
        checksum: u64::MAX,
    }
}

#[test]
fn newer_sender_known_variant_with_unknown_fields_decodes() {
    let newer = FutureAnnouncePeerRequest {
        host_id: "host-9".into(),
        task_id: "task-9".into(),
        peer_id: "peer-9".into(),
        request: Some(future::Request::Register(RegisterPeerRequest {
            download: Some(download()),
        })),
        trace_flags: 0xfeed,
        extra: Some(future_extra()),
    };
    let current = AnnouncePeerRequest::decode(newer.encode_to_vec().as_slice())
        .expect("current type must decode a newer message");
    assert_eq!(current.host_id, "host-9");
    assert_eq!(current.task_id, "task-9");
    assert_eq!(current.peer_id, "peer-9");
    match current.request {
        Some(Request::RegisterPeerRequest(r)) => assert_eq!(r.download, Some(download())),
        other => panic!("expected RegisterPeerRequest, got {other:?}"),
    }
}

#[test]
fn newer_sender_unknown_oneof_variant_decodes_as_none() {
    let newer = FutureAnnouncePeerRequest {
        host_id: "host-9".into(),
        task_id: "task-9".into(),
        peer_id: "peer-9".into(),
        request: Some(future::Request::SomethingNew(future_extra())),
        trace_flags: 1,
        extra: None,
    };
    let current = AnnouncePeerRequest::decode(newer.encode_to_vec().as_slice())
        .expect("an unknown oneof variant must not be a decode error");
    assert_eq!(current.peer_id, "peer-9");
    // Rule 5: the receiver sees "no known variant" and ignores the message.
    assert_eq!(current.request, None);
}

#[test]
fn raw_unknown_fields_of_every_wire_type_are_skipped() {
    let original = piece(5);
    let mut bytes = original.encode_to_vec();
    // field 100, varint (wire type 0): key = 100 << 3 | 0 = 800 -> varint [0xa0, 0x06]
    bytes.extend_from_slice(&[0xa0, 0x06, 0x96, 0x01]);
    // field 101, fixed64 (wire type 1): key = 809 -> [0xa9, 0x06]
    bytes.extend_from_slice(&[0xa9, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
    // field 102, length-delimited (wire type 2): key = 818 -> [0xb2, 0x06], len 3, "abc"
    bytes.extend_from_slice(&[0xb2, 0x06, 3, b'a', b'b', b'c']);
    // field 103, fixed32 (wire type 5): key = 829 -> [0xbd, 0x06]
    bytes.extend_from_slice(&[0xbd, 0x06, 9, 9, 9, 9]);
    // unknown fields may also come first
    let mut prefixed = vec![0xa0, 0x06, 0x01];
    prefixed.extend_from_slice(&bytes);

    for b in [bytes, prefixed] {
        let decoded = Piece::decode(b.as_slice()).expect("decode with unknown fields");
        assert_eq!(decoded, original, "known fields must be kept intact");
    }
}

#[test]
fn unknown_enum_value_is_kept_raw_and_read_as_default() {
    let host = Host {
        id: "h".into(),
        r#type: 7, // a HostType added by a newer version
        ..Default::default()
    };
    let decoded = Host::decode(host.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.r#type, 7, "raw value survives");
    assert_eq!(decoded.r#type(), HostType::Unspecified, "getter falls back");
    assert!(!decoded.is_seed());
    assert_eq!(Priority::effective(7), Priority::Normal);
}

// ---------------------------------------------------------------------------------------------------
// Backward compatibility: an OLDER peer (fewer fields) talks to the current one, both directions.
// ---------------------------------------------------------------------------------------------------

/// A hypothetical first version of `Host` that only had the first four fields.
#[derive(Clone, PartialEq, prost::Message)]
struct OldHost {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(enumeration = "HostType", tag = "2")]
    r#type: i32,
    #[prost(string, tag = "3")]
    hostname: String,
    #[prost(string, tag = "4")]
    ip: String,
}

#[test]
fn old_and_new_host_interoperate() {
    let new = Host {
        id: "h1".into(),
        r#type: HostType::Seed as i32,
        hostname: "node-1".into(),
        ip: "10.1.2.3".into(),
        upload_port: 65002,
        idc: "idc-1".into(),
        max_upload_rate: 100 << 20,
        version: "9.9.9".into(),
        ..Default::default()
    };
    // old reader, new writer
    let old = OldHost::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        old,
        OldHost {
            id: "h1".into(),
            r#type: HostType::Seed as i32,
            hostname: "node-1".into(),
            ip: "10.1.2.3".into(),
        }
    );
    // new reader, old writer: new fields read as their zero value ("old behaviour")
    let back = Host::decode(old.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.id, "h1");
    assert!(back.is_seed());
    assert_eq!(back.upload_port, 0);
    assert_eq!(back.max_upload_rate, 0);
    assert!(back.version.is_empty());
}

#[test]
fn sync_pieces_response_embeds_piece_metadata_only() {
    let resp = SyncPiecesResponse {
        piece: Some(Piece {
            number: 2,
            offset: 8 << 20,
            length: 4 << 20,
            crc32: Some(0xcbf4_3926),
            ..Default::default()
        }),
        content_length: Some(10 << 20),
        piece_count: Some(3),
        piece_length: Some(4 << 20),
        ..Default::default()
    };
    let bytes = resp.encode_to_vec();
    // No piece bytes on gRPC: the whole message is tiny.
    assert!(bytes.len() < 40, "{} bytes", bytes.len());
    let decoded = SyncPiecesResponse::decode(bytes.as_slice()).unwrap();
    let p = decoded.piece.unwrap();
    assert_eq!(p.crc32_digest().as_deref(), Some("crc32:cbf43926"));
    assert_eq!(p.end(), 12 << 20);
}
