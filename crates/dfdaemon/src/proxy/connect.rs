//! CONNECT: a byte tunnel to the named host, or, for hosts listed in `hijackHTTPS.hosts`, TLS
//! terminated here with a certificate minted for the name the client asked for (SNI, else the
//! CONNECT host), so the requests inside can become P2P tasks. Hosts nobody listed are never
//! intercepted. Either kind counts against `proxy.perClientTunnelLimit` while it is open; the
//! target must pass the reach rules ([`super::reach`]), and a byte tunnel connects to the very
//! addresses they checked.

use super::reach::Ask;
use super::timeouts::Watch;
use super::{Body, Client, Proxy, Via, empty, text, tunnel};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest wait for the TCP connection of a tunnel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a hijacked client's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Answer a CONNECT request.
pub(crate) async fn connect(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
    client: &Client,
) -> Response<Body> {
    let peer = client.peer;
    // Tunnels run on the server's drain: it waits for them, up to its grace period.
    let drain = client.drain.clone();
    let Some(authority) = req.uri().authority().cloned() else {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("CONNECT {} names no host:port", req.uri()),
        );
    };
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(443);
    let target = format!("{host}:{port}");
    let addrs = match proxy.check_reach(Ask::Tunnel, &host, port).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let tunnel_slot = match proxy.tunnels.take(peer.ip()) {
        Ok(s) => s,
        Err(over) => return text(StatusCode::SERVICE_UNAVAILABLE, &over.to_string()),
    };
    // The connection's own slot stays taken while its tunnel is open.
    let slots = (client.slot.clone(), tunnel_slot);
    if let Some((ca, upstream)) = proxy.hijacked(&target) {
        let sni_default = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let p = proxy.clone();
        let client = client.clone();
        drain.spawn(async move {
            let _slots = slots;
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed");
                    return;
                }
            };
            let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                rustls::server::Acceptor::default(),
                TokioIo::new(upgraded),
            );
            let handshake = async {
                let start = acceptor
                    .await
                    .map_err(|e| format!("reading ClientHello: {e}"))?;
                let name = start
                    .client_hello()
                    .server_name()
                    .map(str::to_string)
                    .unwrap_or(sni_default);
                let cfg = ca.server_config(&name).await.map_err(|e| {
                    format!(
                        "certificate for {name}: {}",
                        dragonfly_common::error::chain(&e)
                    )
                })?;
                start
                    .into_stream(cfg)
                    .await
                    .map_err(|e| format!("TLS handshake for {name}: {e}"))
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(client = %peer, host = %target, error = %e, "hijacked CONNECT failed (does the client trust the proxy CA? GET /ca.crt)");
                    return;
                }
                Err(_) => {
                    tracing::info!(client = %peer, host = %target, "hijacked CONNECT: no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let via = Via::Tunnel {
                authority: target,
                upstream,
            };
            let watch = Watch::new(p.timeouts);
            p.serve_conn(tls, client, via, watch).await;
        });
        return Response::new(empty());
    }
    // A tunnel: connect first, so a dead host is an error the client can read.
    if addrs.is_empty() {
        return text(
            StatusCode::BAD_GATEWAY,
            &format!("cannot connect to {target}: the name does not resolve"),
        );
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addrs[..])).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to {target}: {e}"),
            );
        }
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("cannot connect to {target}: no answer within {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let _ = upstream.set_nodelay(true);
    let budget = proxy.tunnel_budget.clone();
    drain.spawn(async move {
        let _slots = slots;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => match tunnel::copy(TokioIo::new(upgraded), upstream, &budget).await {
                Ok((up, down)) => {
                    tracing::debug!(client = %peer, host = %target, up, down, "tunnel closed")
                }
                Err(e) => {
                    tracing::debug!(client = %peer, host = %target, error = %e, "tunnel ended")
                }
            },
            Err(e) => tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(empty())
}
